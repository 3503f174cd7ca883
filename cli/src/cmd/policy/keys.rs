//! `wardctl policy sign` and `wardctl policy keygen`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wardmesh_identity::seal::write_private;
use wardmesh_policy::{BundleFiles, SignatureAlgorithm, SigningKey, sign_bundle};

use super::{KeyAlg, KeygenArgs, SignArgs, key_id_from_path, read, write_atomic};

pub(super) fn sign(a: &SignArgs) -> anyhow::Result<()> {
    let key_id = match &a.key_id {
        Some(k) => k.clone(),
        None => key_id_from_path(&a.key)?,
    };
    let pem = String::from_utf8(read(&a.key)?)
        .with_context(|| format!("{} is not a PEM file", a.key.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem, &key_id)
        .with_context(|| format!("loading the signing key {}", a.key.display()))?;
    let bundle = read(&a.bundle)?;
    let signed =
        sign_bundle(&bundle, &key).with_context(|| format!("signing {}", a.bundle.display()))?;
    let out = a.out.as_ref().unwrap_or(&a.bundle);
    write_atomic(out, &signed)?;
    let files = BundleFiles::read_tar_gz(&signed).map_or(0, |f| f.len().saturating_sub(1));
    eprintln!(
        "signed {} with key {key_id:?} ({}): {files} files covered",
        out.display(),
        key.algorithm()
    );
    Ok(())
}

pub(super) fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let public = public_path(&a.out);
    for p in [&a.out, &public] {
        if p.exists() && !a.force {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    let key_id = key_id_from_path(&a.out)?;
    let alg = match a.alg {
        KeyAlg::Ed25519 => SignatureAlgorithm::EdDsa,
        KeyAlg::Es256 => SignatureAlgorithm::Es256,
    };
    let key = SigningKey::generate(alg, &key_id).context("generating the key")?;
    write_private(&a.out, key.to_pkcs8_pem().as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    std::fs::write(&public, key.verifying_key().to_spki_pem())
        .with_context(|| format!("writing {}", public.display()))?;
    println!("{}", a.out.display());
    println!("{}", public.display());
    eprintln!(
        "{alg} key pair with key id {key_id:?}: sign with `wardctl policy sign <bundle> --key {}`; \
         agents and `wardctl policy eval --public-key {}` verify with the public key. Keep the private key offline.",
        a.out.display(),
        public.display()
    );
    Ok(())
}

/// `key.pem` → `key.pub.pem`; any other name gets `.pub.pem` appended.
fn public_path(private: &Path) -> PathBuf {
    let name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    private.with_file_name(format!("{stem}.pub.pem"))
}
