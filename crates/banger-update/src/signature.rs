//! Release signatures: ECDSA P-256 over the SHA-256 of the `SHA256SUMS`
//! body, the signature DER-encoded and then base64'd. That is what
//! `cosign sign-blob --key` writes, and what
//! `openssl dgst -sha256 -sign key.pem -out sig.der SHA256SUMS` followed
//! by `openssl base64` gives. The public key is a SubjectPublicKeyInfo PEM
//! (`-----BEGIN PUBLIC KEY-----`, as `openssl ec -pubout` and cosign write).

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use crate::UpdateError;

/// The release signing public key compiled into this build, if any. None
/// exists yet, so releases can only be verified against a key given at run
/// time (see [`release_public_key`]).
pub const RELEASE_PUBLIC_KEY: Option<&str> = None;

/// The key to verify releases with: `override_pem` when given, else the
/// embedded [`RELEASE_PUBLIC_KEY`], else [`UpdateError::NoReleaseKey`].
pub fn release_public_key(override_pem: Option<&str>) -> Result<&str, UpdateError> {
    override_pem
        .or(RELEASE_PUBLIC_KEY)
        .ok_or(UpdateError::NoReleaseKey)
}

/// Parses a P-256 public key from SubjectPublicKeyInfo PEM.
pub(crate) fn parse_public_key(pem: &str) -> Result<VerifyingKey, UpdateError> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
        UpdateError::PublicKey(format!(
            "not a P-256 public key in PEM (-----BEGIN PUBLIC KEY-----): {e}"
        ))
    })
}

/// Checks that `sig_file` (base64 of a DER ECDSA P-256 signature; ASCII
/// whitespace anywhere in it, such as a trailing newline or `openssl
/// base64`'s line wrapping, is ignored) signs `body` under the key in
/// `public_key_pem`.
pub fn verify_signature(
    public_key_pem: &str,
    body: &[u8],
    sig_file: &[u8],
) -> Result<(), UpdateError> {
    let key = parse_public_key(public_key_pem)?;
    let bad = |problem: String| UpdateError::Signature(problem);
    let compact: Vec<u8> = sig_file
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(bad("the signature file is empty".into()));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| bad(format!("the signature file is not base64: {e}")))?;
    let sig = DerSignature::from_bytes(&der)
        .map_err(|_| bad("the signature is not a DER-encoded ECDSA P-256 signature".into()))?;
    key.verify(body, &sig).map_err(|_| {
        bad("the signature does not match: the file was altered or signed by another key".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Signer;

    #[test]
    fn openssl_signatures_verify() {
        let signer = Signer::new();
        // Several bodies, so both low-S and high-S signatures (openssl does
        // not normalise S) are almost surely among them.
        for i in 0..8 {
            let body = format!("{i:064x}  banger-v0.2.{i}-x86_64-linux.tar.gz\n");
            let sig = signer.sign(body.as_bytes());
            verify_signature(&signer.public_pem, body.as_bytes(), &sig).unwrap();
        }
    }

    #[test]
    fn whitespace_around_and_inside_the_signature_is_tolerated() {
        let signer = Signer::new();
        let body = b"body\n";
        let one_line = signer.sign(body);
        assert!(!one_line.contains(&b'\n'), "signer writes -A base64");
        let text = String::from_utf8(one_line).unwrap();
        for variant in [
            format!("{text}\n"),
            format!("  \r\n{text}\r\n\n"),
            format!("{}\n{}\n", &text[..64], &text[64..]),
        ] {
            verify_signature(&signer.public_pem, body, variant.as_bytes()).unwrap();
        }
        // `openssl base64` without -A wraps at 64 columns.
        let wrapped = signer.sign_wrapped(body);
        verify_signature(&signer.public_pem, body, &wrapped).unwrap();
        // The key may come with surrounding blank lines too.
        let pem = format!("\n{}\n\n", signer.public_pem);
        verify_signature(&pem, body, text.as_bytes()).unwrap();
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let signer = Signer::new();
        let sig = signer.sign(b"aaaa  banger.tar.gz\n");
        let e = verify_signature(&signer.public_pem, b"bbbb  banger.tar.gz\n", &sig).unwrap_err();
        assert!(matches!(e, UpdateError::Signature(_)), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (ours, theirs) = (Signer::new(), Signer::new());
        let body = b"sums\n";
        let sig = theirs.sign(body);
        verify_signature(&theirs.public_pem, body, &sig).unwrap();
        let e = verify_signature(&ours.public_pem, body, &sig).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn malformed_signature_files() {
        let signer = Signer::new();
        let body = b"sums\n";
        let good = signer.sign(body);
        let der = base64::engine::general_purpose::STANDARD
            .decode(&good)
            .unwrap();
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let mut flipped = der.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for (sig, needle) in [
            (Vec::new(), "empty"),
            (b" \n\t\r\n".to_vec(), "empty"),
            (b"!!not base64!!".to_vec(), "not base64"),
            (good[..good.len() - 2].to_vec(), "not base64"),
            (b64(b"plain text, not DER").into_bytes(), "not a DER"),
            (b64(&der[..der.len() - 1]).into_bytes(), "not a DER"),
            (
                b64(&[der.as_slice(), &[0]].concat()).into_bytes(),
                "not a DER",
            ),
            // The raw DER rather than its base64.
            (der.clone(), "not base64"),
            (b64(&flipped).into_bytes(), "does not match"),
        ] {
            let e = verify_signature(&signer.public_pem, body, &sig).unwrap_err();
            assert!(matches!(e, UpdateError::Signature(_)), "{needle}: {e}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn bad_public_keys() {
        let signer = Signer::new();
        let sig = signer.sign(b"x");
        let private = std::fs::read_to_string(signer.dir.path().join("key.pem")).unwrap();
        let rsa = signer.rsa_public_pem();
        for pem in [
            "",
            "not a key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            private.as_str(),
            rsa.as_str(),
        ] {
            let e = verify_signature(pem, b"x", &sig).unwrap_err();
            assert!(matches!(e, UpdateError::PublicKey(_)), "{pem:?}: {e}");
        }
    }

    #[test]
    fn the_release_key_falls_back_to_the_embedded_one() {
        // This build embeds none.
        assert_eq!(RELEASE_PUBLIC_KEY, None);
        let e = release_public_key(None).unwrap_err();
        assert!(matches!(e, UpdateError::NoReleaseKey), "{e}");
        assert!(
            e.to_string()
                .contains("embeds no release signing key, so it cannot verify releases"),
            "{e}"
        );
        assert_eq!(release_public_key(Some("PEM")).unwrap(), "PEM");
    }
}
