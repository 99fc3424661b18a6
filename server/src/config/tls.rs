//! TLS for server listeners (rustls with the ring provider): PEM files, or a self-signed
//! certificate for localhost made at start.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig as RustlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::TlsConfig;

/// Names a self-signed certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Builds the acceptor of a server's TLS config.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, String> {
    let (certs, key) = match tls {
        TlsConfig::Files { cert, key } => read_files(cert, key)?,
        TlsConfig::SelfSigned => self_signed()?,
    };
    let config = RustlsConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Checks that the files are readable PEM and that the key matches the certificate.
pub fn check_files(cert: &Path, key: &Path) -> Result<(), String> {
    acceptor(&TlsConfig::Files {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })
    .map(drop)
}

fn read_files(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    Ok((certs, key))
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| format!("cannot use the self-signed key: {e}"))?;
    Ok((vec![made.cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_acceptor_builds() {
        assert!(acceptor(&TlsConfig::SelfSigned).is_ok());
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = std::env::temp_dir().join(format!("ss-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = check_files(&dir.join("missing.pem"), &garbage).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let err = check_files(&garbage, &garbage).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
