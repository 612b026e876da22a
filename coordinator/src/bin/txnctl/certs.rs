//! `txnctl certs`: a throwaway CA and one certificate per node, valid for localhost as server
//! and client, so a local cluster can run with mutual TLS. The keys are written readable by
//! the owner only; they are for tests and demos, never for production.

use serde_json::{Value, json};

use crate::Res;

/// Writes a CA and a certificate per node into `dir`.
pub fn make_certs(dir: &std::path::Path, nodes: &[String]) -> Res<Value> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("generating certificates: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("--dir {}: {e}", dir.display()))?;
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "txnkit throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    write("ca.pem", &ca.pem())?;
    for node in nodes {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "node {node:?}: use letters, digits, '-' and '_' only"
            ));
        }
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &ca).map_err(err)?;
        write(&format!("{node}.pem"), &cert.pem())?;
        write(&format!("{node}.key"), &key.serialize_pem())?;
        let key_path = dir.join(format!("{node}.key"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("protecting {}: {e}", key_path.display()))?;
    }
    Ok(json!({"dir": dir.display().to_string(), "ca": "ca.pem", "nodes": nodes.join(",")}))
}
