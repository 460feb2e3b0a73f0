//! What every TLS client of ours shares (the Sequin API client, Postgres connections): the
//! crypto provider and the system's trusted roots.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;

/// `ring`: the one provider compiled in, chosen explicitly so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// "The system roots": Mozilla's, plus the system store (where a private CA goes;
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` work too). Read once per process.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(
                system_roots = added,
                errors = native.errors.len(),
                "TLS roots loaded"
            );
            Arc::new(roots)
        })
        .clone()
}
