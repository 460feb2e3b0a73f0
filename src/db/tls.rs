//! TLS for Postgres connections, with libpq's meanings of `sslmode` and `sslrootcert`:
//!
//! - `disable`: no TLS.
//! - `prefer` (the default): TLS if the server offers it, else plain; no certificate check.
//! - `require`: TLS or no connection; no certificate check, unless `sslrootcert` names a
//!   file: then, as in libpq, the chain is checked as with `verify-ca`.
//! - `verify-ca`: TLS, and the certificate chain must lead to a trusted CA.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! Trusted CAs come from `sslrootcert=<PEM file>`, or, for `verify-full` only, are the system
//! roots ([`crate::tls::system_roots`]; also `sslrootcert=system`, which like libpq asks for
//! `verify-full`). `verify-ca` without a file is refused, as libpq refuses it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (plain first, TLS only if the server insists), which
/// tokio-postgres cannot do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(TlsError::BadMode(other.chars().take(40).collect()));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does with the socket: the verification is ours.
    pub(crate) fn postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted CAs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    System,
    File(PathBuf),
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::System => f.write_str("the system roots"),
            Roots::File(path) => write!(f, "sslrootcert={}", path.display()),
        }
    }
}

/// The TLS half of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
}

impl TlsSettings {
    /// From the connection string's `sslmode` and `sslrootcert`, as libpq reads them.
    pub(crate) fn from_params(
        sslmode: Option<&str>,
        sslrootcert: Option<&str>,
    ) -> Result<TlsSettings, TlsError> {
        let roots = match sslrootcert {
            None | Some("") | Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
        };
        let system_asked = sslrootcert == Some("system");
        let mode = match sslmode {
            Some(mode) => SslMode::parse(mode)?,
            None if system_asked => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        // libpq: the system roots vouch for any public name, so only a checked name means
        // anything with them.
        if system_asked && mode != SslMode::VerifyFull {
            return Err(TlsError::SystemRootsNeedVerifyFull(mode));
        }
        // The same reason without the word `system`: verify-ca checks no name, so with the
        // system roots any certificate from any public CA would pass. libpq refuses it too
        // (it wants its root.crt).
        if mode == SslMode::VerifyCa && roots == Roots::System {
            return Err(TlsError::VerifyCaNeedsRootFile);
        }
        // libpq: `require` with a root certificate file checks the chain like `verify-ca`.
        let mode = match (mode, &roots) {
            (SslMode::Require, Roots::File(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        Ok(TlsSettings { mode, roots })
    }

    /// The connector for these settings. Reads the `sslrootcert` file now.
    pub(crate) fn connector(&self) -> Result<MakePgTls, TlsError> {
        let provider = crate::tls::provider();
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Verifier {
                provider: provider.clone(),
                roots: None,
            }),
            SslMode::VerifyCa => Arc::new(Verifier {
                provider: provider.clone(),
                roots: Some(self.root_store()?),
            }),
            SslMode::VerifyFull => {
                WebPkiServerVerifier::builder_with_provider(self.root_store()?, provider.clone())
                    .build()
                    .map_err(|_| TlsError::NoRoots(self.roots.to_string()))?
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakePgTls {
            inner: MakeRustlsConnect::new(config),
            context: Arc::new(Context {
                mode: self.mode,
                roots: self.roots.to_string(),
            }),
        })
    }

    fn root_store(&self) -> Result<Arc<RootCertStore>, TlsError> {
        match &self.roots {
            Roots::System => Ok(crate::tls::system_roots()),
            Roots::File(path) => read_roots(path).map(Arc::new),
        }
    }
}

/// The CA certificates of a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let shown = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|err| TlsError::RootCertUnreadable {
        path: shown(),
        reason: err.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::RootCertInvalid {
            path: shown(),
            reason: err.to_string(),
        })?;
    let mut store = RootCertStore::empty();
    let (added, _unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::RootCertInvalid {
            path: shown(),
            reason: "no usable PEM certificate in it".to_string(),
        });
    }
    Ok(store)
}

/// A TLS setting that cannot work, or a TLS handshake that failed; each says what to fix.
/// Holds no part of the connection string but the host, the mode and the root file's path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode `{0}` is not valid; use one of disable, prefer, require, verify-ca, verify-full"
    )]
    BadMode(String),
    #[error("sslmode=verify-ca needs sslrootcert=<the CA certificate file>: with the system roots any public certificate would pass; use verify-full for them")]
    VerifyCaNeedsRootFile,
    #[error("sslrootcert=system works only with sslmode=verify-full (as in libpq), not sslmode={0}; set sslmode=verify-full or name a CA file in sslrootcert")]
    SystemRootsNeedVerifyFull(SslMode),
    #[error("sslrootcert={path}: cannot read the file ({reason}); fix the path or the file's permissions")]
    RootCertUnreadable { path: String, reason: String },
    #[error("sslrootcert={path}: not a PEM CA certificate file ({reason}); give the CA certificate in PEM format")]
    RootCertInvalid { path: String, reason: String },
    #[error("TLS: {0} hold no trusted CA; set sslrootcert=<the CA certificate file>")]
    NoRoots(String),
    #[error("TLS: the server certificate for {host} is not signed by a CA in {roots} (sslmode={mode}); set sslrootcert=<the CA certificate file> or fix the server certificate")]
    Untrusted {
        host: String,
        roots: String,
        mode: SslMode,
    },
    #[error("TLS: the server certificate is not valid for the host name {0} (sslmode=verify-full); connect by a name the certificate lists, or use sslmode=verify-ca")]
    WrongHost(String),
    #[error("TLS: the server certificate for {host} has expired or is not valid yet (sslmode={mode}); renew the server certificate or fix this machine's clock")]
    OutOfDate { host: String, mode: SslMode },
    #[error("TLS: the server certificate for {host} was refused: {detail} (sslmode={mode}); fix the server certificate")]
    BadCertificate {
        host: String,
        detail: String,
        mode: SslMode,
    },
    #[error("TLS: `{0}` is not a host name a certificate can be checked against; use the server's DNS name or IP address as host")]
    BadHostName(String),
    #[error("TLS: the handshake with {host} failed: {detail} (sslmode={mode}); check the server's ssl settings, or use sslmode=disable where the network is trusted")]
    Handshake {
        host: String,
        detail: String,
        mode: SslMode,
    },
    #[error("TLS: the server does not accept TLS connections, and the sslmode asks for TLS; turn ssl on in the server, or use sslmode=prefer")]
    NotOffered,
    #[error("TLS: no host name to check the server certificate against (only hostaddr is given); add host=<the server's name>")]
    NoHostName,
}

impl TlsError {
    /// The TLS problem behind a failed connection, if that is what failed.
    pub(crate) fn behind(err: &tokio_postgres::Error) -> Option<TlsError> {
        let source = std::error::Error::source(err)?;
        if let Some(tls) = source.downcast_ref::<TlsError>() {
            return Some(tls.clone());
        }
        // tokio-postgres's own TLS errors carry no type of their own: these are its words.
        match source.to_string().as_str() {
            "server does not support TLS" => Some(TlsError::NotOffered),
            "no hostname provided for TLS handshake" => Some(TlsError::NoHostName),
            _ => None,
        }
    }
}

/// `verify-ca` (with roots) and the unchecked modes (without): the chain must lead to a
/// trusted CA, or anything goes. Either way the handshake signature is checked, so the
/// server holds the key of the certificate it presented.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The stream of a Postgres connection made with [`MakePgTls`].
pub type PgTlsStream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// What a handshake error message needs to say what to fix.
struct Context {
    mode: SslMode,
    roots: String,
}

impl Context {
    fn explain(&self, host: &str, err: &io::Error) -> TlsError {
        let host = host.to_string();
        let mode = self.mode;
        let inner = err.get_ref();
        if inner.is_some_and(|e| e.is::<rustls::pki_types::InvalidDnsNameError>()) {
            return TlsError::BadHostName(host);
        }
        let Some(rustls_error) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return TlsError::Handshake {
                host,
                detail: err.to_string(),
                mode,
            };
        };
        let rustls::Error::InvalidCertificate(problem) = rustls_error else {
            return TlsError::Handshake {
                host,
                detail: rustls_error.to_string(),
                mode,
            };
        };
        match problem {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsError::Untrusted {
                    host,
                    roots: self.roots.clone(),
                    mode,
                }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsError::WrongHost(host)
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsError::OutOfDate { host, mode },
            other => TlsError::BadCertificate {
                host,
                detail: other.to_string(),
                mode,
            },
        }
    }
}

/// tokio-postgres-rustls's connector, with handshake errors that say what to fix.
#[derive(Clone)]
pub(crate) struct MakePgTls {
    inner: MakeRustlsConnect,
    context: Arc<Context>,
}

impl<S> MakeTlsConnect<S> for MakePgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = PgTlsConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        let Ok(inner) = MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, host);
        Ok(PgTlsConnect {
            inner,
            host: host.to_string(),
            context: self.context.clone(),
        })
    }
}

pub(crate) struct PgTlsConnect<T> {
    inner: T,
    host: String,
    context: Arc<Context>,
}

impl<S, T> TlsConnect<S> for PgTlsConnect<T>
where
    T: TlsConnect<S, Error = io::Error>,
    T::Future: Send + 'static,
    T::Stream: Send,
{
    type Stream = T::Stream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let PgTlsConnect {
            inner,
            host,
            context,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move { handshake.await.map_err(|err| context.explain(&host, &err)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Option<&str>, root: Option<&str>) -> Result<TlsSettings, TlsError> {
        TlsSettings::from_params(mode, root)
    }

    #[test]
    fn sslmode_means_what_libpq_means() {
        let file = Roots::File(PathBuf::from("/ca.pem"));
        let cases = [
            (None, None, SslMode::Prefer, Roots::System),
            (Some("disable"), None, SslMode::Disable, Roots::System),
            (Some("require"), None, SslMode::Require, Roots::System),
            // A root file makes `require` check the chain.
            (
                Some("require"),
                Some("/ca.pem"),
                SslMode::VerifyCa,
                file.clone(),
            ),
            (
                Some("prefer"),
                Some("/ca.pem"),
                SslMode::Prefer,
                file.clone(),
            ),
            (
                Some("verify-ca"),
                Some("/ca.pem"),
                SslMode::VerifyCa,
                file.clone(),
            ),
            (
                Some("verify-full"),
                Some("/ca.pem"),
                SslMode::VerifyFull,
                file,
            ),
            (None, Some("system"), SslMode::VerifyFull, Roots::System),
            (
                Some("verify-full"),
                Some(""),
                SslMode::VerifyFull,
                Roots::System,
            ),
        ];
        for (mode, root, want_mode, want_roots) in cases {
            let got = settings(mode, root).unwrap();
            assert_eq!(
                (got.mode, got.roots),
                (want_mode, want_roots),
                "{mode:?} {root:?}"
            );
        }
        let to_postgres: Vec<_> = [SslMode::Disable, SslMode::Prefer, SslMode::VerifyCa]
            .map(SslMode::postgres)
            .into();
        use tokio_postgres::config::SslMode as Pg;
        assert_eq!(to_postgres, [Pg::Disable, Pg::Prefer, Pg::Require]);
    }

    #[test]
    fn a_bad_sslmode_names_the_allowed_values() {
        let err = settings(Some("verify_full"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sslmode `verify_full` is not valid; use one of disable, prefer, require, verify-ca, verify-full"
        );
        // libpq's `allow` cannot be done by tokio-postgres: refused, not silently changed.
        assert!(matches!(
            settings(Some("allow"), None),
            Err(TlsError::BadMode(_))
        ));
    }

    #[test]
    fn system_roots_by_name_need_verify_full_as_in_libpq() {
        let err = settings(Some("require"), Some("system")).unwrap_err();
        assert_eq!(err, TlsError::SystemRootsNeedVerifyFull(SslMode::Require));
        assert!(err.to_string().contains("sslmode=verify-full"), "{err}");
    }

    #[test]
    fn verify_ca_without_a_root_file_is_refused_as_in_libpq() {
        // With the system roots, verify-ca (no name check) would pass any public certificate.
        for root in [None, Some("")] {
            let err = settings(Some("verify-ca"), root).unwrap_err();
            assert_eq!(err, TlsError::VerifyCaNeedsRootFile, "{root:?}");
            assert_eq!(
                err.to_string(),
                "sslmode=verify-ca needs sslrootcert=<the CA certificate file>: with the system roots any public certificate would pass; use verify-full for them"
            );
        }
        // `require` without a file stays unchecked: it claims no verification.
        assert_eq!(
            settings(Some("require"), Some("")).unwrap().mode,
            SslMode::Require
        );
    }

    #[test]
    fn an_unreadable_or_empty_root_file_is_named() {
        let missing = std::env::temp_dir().join("userhooks-no-such-ca.pem");
        let err = settings(Some("verify-full"), missing.to_str())
            .unwrap()
            .connector()
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("sslrootcert={}: cannot read", missing.display())),
            "{text}"
        );

        let empty = std::env::temp_dir().join(format!(
            "userhooks-empty-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = settings(Some("verify-ca"), empty.to_str())
            .unwrap()
            .connector()
            .err()
            .unwrap();
        std::fs::remove_file(&empty).unwrap();
        assert!(
            matches!(&err, TlsError::RootCertInvalid { path, .. } if *path == empty.display().to_string()),
            "{err}"
        );
        // Unchecked modes read no file.
        assert!(settings(Some("prefer"), missing.to_str())
            .unwrap()
            .connector()
            .is_ok());
    }

    #[test]
    fn handshake_errors_are_explained() {
        let context = Context {
            mode: SslMode::VerifyFull,
            roots: "the system roots".to_string(),
        };
        let io = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let untrusted = context.explain(
            "db.example.com",
            &io(CertificateError::UnknownIssuer.into()),
        );
        assert_eq!(
            untrusted.to_string(),
            "TLS: the server certificate for db.example.com is not signed by a CA in the system roots (sslmode=verify-full); set sslrootcert=<the CA certificate file> or fix the server certificate"
        );
        let expired = context.explain("h", &io(CertificateError::Expired.into()));
        assert!(matches!(expired, TlsError::OutOfDate { .. }), "{expired}");
        let reset = context.explain("h", &io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(matches!(reset, TlsError::Handshake { .. }), "{reset}");
    }
}
