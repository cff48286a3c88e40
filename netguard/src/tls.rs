//! TLS for every outgoing request to a URL (webhooks, `webhook_send`, `play`, an
//! OpenAI-compatible speech server): rustls with the *ring* provider (already in the build
//! through async-nats; aws-lc-rs would add a C build), the system's roots through
//! rustls-platform-verifier, plus roots the operator adds with [`trust_extra_roots`]
//! (`VBIN_TLS_EXTRA_CA_FILE`: a private CA in front of a customer's endpoint, or a test's).

use std::path::Path;
use std::sync::OnceLock;

static EXTRA_ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Why extra roots could not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or a malformed one.
    #[error("{path}: not a PEM bundle of certificates ({why})")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Other roots were trusted already in this process.
    #[error("extra roots are set once per process")]
    AlreadySet,
}

/// Trusts the certificates of the PEM file `path` as roots, besides the system's, for every
/// client built afterwards by [`client_builder`]. Returns how many.
pub fn trust_extra_roots(path: &Path) -> Result<usize, TlsError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsError::Parse {
        path: shown.clone(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: shown,
            why: "no certificate".into(),
        });
    }
    let n = certs.len();
    EXTRA_ROOTS.set(certs).map_err(|_| TlsError::AlreadySet)?;
    Ok(n)
}

/// Installs ring as the process's rustls provider (a provider installed before is kept).
/// Every reqwest client needs one: a program calls this before building any that does not come
/// from [`client_builder`] (the `vbin` binary does at start).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder speaking TLS as described above (`http://` works as before).
pub fn client_builder() -> reqwest::ClientBuilder {
    install_provider();
    let b = reqwest::Client::builder();
    match EXTRA_ROOTS.get() {
        Some(roots) => b.tls_certs_merge(roots.iter().cloned()),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_build_and_bad_bundles_are_errors() {
        client_builder().build().expect("a TLS client builds");
        let dir = std::env::temp_dir().join(format!("vbin-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        assert!(matches!(
            trust_extra_roots(&junk),
            Err(TlsError::Parse { .. })
        ));
        assert!(matches!(
            trust_extra_roots(&dir.join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
