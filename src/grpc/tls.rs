//! TLS on the gRPC port (rustls through tonic), and mutual TLS when a client CA is set:
//! the configuration from FLASH_TLS_CERT / FLASH_TLS_KEY / FLASH_TLS_CLIENT_CA, checked
//! before the server starts, and the verified client certificate's subject of a call.
use anyhow::{bail, Context};
use std::path::Path;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// The subject of the client certificate the TLS handshake verified, as an RFC 4514
/// string (the most specific attribute first, e.g. `CN=marketplace,O=Acme`); None on a
/// plaintext connection, a TLS one without client certificate, or an unparsable one.
///
/// Only mutual TLS (FLASH_TLS_CLIENT_CA set) makes it an identity: tonic reports the
/// peer's certificates only after rustls verified them against that CA.
pub fn peer_subject<B>(request: &http::Request<B>) -> Option<String> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificates = info.peer_certs()?;
    // The end-entity certificate comes first; the rest is its chain.
    let leaf = certificates.first()?;
    let (_, certificate) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    Some(rfc4514(certificate.subject()))
}

/// A distinguished name as RFC 4514 writes it: RDNs in reverse order, comma-separated,
/// multi-valued ones joined by `+`, short names where there is one (CN, O, OU, C, L, ST,
/// …) and the dotted OID otherwise, special characters escaped; a value that is not a
/// string is `#` and its DER in hex.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let in_order: Vec<_> = name.iter_rdn().collect();
    let rdns: Vec<String> = in_order
        .into_iter()
        .rev()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let key = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = match attribute.as_str() {
                        Ok(text) => escape(text),
                        Err(_) => format!("#{}", hex(attribute.attr_value().as_bytes())),
                    };
                    format!("{key}={value}")
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    rdns.join(",")
}

/// RFC 4514 §2.4: `"+,;<>\` anywhere, `#` or a space first, a space last.
fn escape(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut escaped = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && (c == '#' || c == ' '))
            || (index == last && c == ' ');
        if special {
            escaped.push('\\');
        }
        if c == '\0' {
            escaped.push_str("\\00");
        } else {
            escaped.push(c);
        }
    }
    escaped
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The server's TLS configuration from the three settings' paths: None when neither a
/// certificate nor a key is given (plaintext; a client CA alone is refused). Every file
/// is read and checked here, so `flash serve` refuses to start naming the setting at
/// fault, never at the first handshake.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            if client_ca.is_some() {
                bail!(
                    "FLASH_TLS_CLIENT_CA is set but FLASH_TLS_CERT and FLASH_TLS_KEY are not: \
                     mutual TLS needs the server's own certificate and key"
                );
            }
            return Ok(None);
        }
        (Some(_), None) => bail!("FLASH_TLS_CERT is set but FLASH_TLS_KEY is not: give both"),
        (None, Some(_)) => bail!("FLASH_TLS_KEY is set but FLASH_TLS_CERT is not: give both"),
        (Some(cert), Some(key)) => (cert, key),
    };
    let cert_pem = read("FLASH_TLS_CERT", cert)?;
    certificates("FLASH_TLS_CERT", cert, &cert_pem)?;
    let key_pem = read("FLASH_TLS_KEY", key)?;
    private_key(key, &key_pem)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
    if let Some(client_ca) = client_ca {
        let ca_pem = read("FLASH_TLS_CLIENT_CA", client_ca)?;
        certificates("FLASH_TLS_CLIENT_CA", client_ca, &ca_pem)?;
        config = config.client_ca_root(Certificate::from_pem(&ca_pem));
    }
    // rustls builds its configuration here: a key that does not match the certificate,
    // or a kind it does not support, is found now.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|error| {
            anyhow::anyhow!(
                "FLASH_TLS_CERT / FLASH_TLS_KEY / FLASH_TLS_CLIENT_CA: rustls refuses them: {}",
                source_chain(&error)
            )
        })?;
    Ok(Some(config))
}

fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

/// At least one PEM `CERTIFICATE` block, each a parsable X.509 certificate.
fn certificates(setting: &str, path: &Path, pem: &[u8]) -> anyhow::Result<usize> {
    let mut count = 0;
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|error| {
            anyhow::anyhow!("{setting}: {} is not valid PEM ({error})", path.display())
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block.parse_x509().map_err(|error| {
            anyhow::anyhow!(
                "{setting}: {} holds a certificate that does not parse ({error})",
                path.display()
            )
        })?;
        count += 1;
    }
    if count == 0 {
        bail!(
            "{setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(count)
}

/// One PEM private key block (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|error| {
            anyhow::anyhow!(
                "FLASH_TLS_KEY: {} is not valid PEM ({error})",
                path.display()
            )
        })?;
        if block.label.ends_with("PRIVATE KEY") && !block.contents.is_empty() {
            return Ok(());
        }
    }
    bail!(
        "FLASH_TLS_KEY: {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
        path.display()
    )
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_escaped_as_rfc_4514_says() {
        assert_eq!(escape("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape("#1 "), "\\#1\\ ");
        assert_eq!(escape("a+b=c"), "a\\+b=c");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn a_plaintext_request_has_no_peer_subject() {
        let request = http::Request::builder().body(()).unwrap();
        assert_eq!(peer_subject(&request), None);
    }

    #[test]
    fn the_settings_come_together_or_not_at_all() {
        let path = Path::new("/nonexistent.pem");
        let error = |cert, key, ca| server_config(cert, key, ca).unwrap_err().to_string();
        assert!(server_config(None, None, None).unwrap().is_none());
        assert!(error(Some(path), None, None).starts_with("FLASH_TLS_CERT is set"));
        assert!(error(None, Some(path), None).starts_with("FLASH_TLS_KEY is set"));
        assert!(error(None, None, Some(path)).starts_with("FLASH_TLS_CLIENT_CA is set"));
        assert!(error(Some(path), Some(path), None).starts_with("FLASH_TLS_CERT: cannot read"));
    }
}
