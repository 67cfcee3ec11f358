//! What the fleet writes to a store, sealed: key names from a keyed hash, values encrypted.
//! Both keys come from the secret through HKDF-SHA256, so only holders of the secret can
//! find the keys of a set of credentials or read what they hold.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Credentials;
use crate::store::Keys;

/// Names the derivation, so that keys derived for another purpose never match these.
const SALT: &[u8] = b"lengow-auth fleet store v1";
/// How many bytes of the keyed hash name the keys: 128 bits, more than any fleet needs to
/// never see two credentials collide.
const TAG_BYTES: usize = 16;
/// XChaCha20-Poly1305's nonce: 24 random bytes, so random nonces never repeat in practice.
const NONCE_BYTES: usize = 24;

/// The keys of one set of credentials at one origin, and the cipher for their values.
pub(crate) struct Sealer {
    keys: Keys,
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub(crate) fn new(credentials: &Credentials, origin: &str) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), credentials.secret.as_bytes());
        // HMAC-SHA256 takes a key of one block (64 bytes) as is.
        let mut naming = [0u8; 64];
        let mut sealing = [0u8; 32];
        // 64 and 32 bytes are far below HKDF-SHA256's limit of 8160: expand cannot fail here.
        let _ = hkdf.expand(b"key names", &mut naming);
        let _ = hkdf.expand(b"sealed values", &mut sealing);
        let tag = {
            let mut mac = <Hmac<Sha256> as KeyInit>::new(&naming.into());
            // Length-prefixed, so that no two (origin, access token) pairs hash the same input.
            mac.update(&(origin.len() as u64).to_be_bytes());
            mac.update(origin.as_bytes());
            mac.update(credentials.access_token.as_bytes());
            let digest = mac.finalize().into_bytes();
            digest[..TAG_BYTES]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let cipher = XChaCha20Poly1305::new(&sealing.into());
        naming.fill(0);
        sealing.fill(0);
        Self {
            keys: Keys::new(&tag),
            cipher,
        }
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Encrypts `msg`, bound to `what` (which value it is) and `generation`: a value moved
    /// to another key or generation does not open.
    pub(crate) fn seal(&self, what: &str, generation: u64, msg: &[u8]) -> Vec<u8> {
        let nonce = chacha20poly1305::XNonce::generate();
        let aad = &aad(what, generation);
        match self.cipher.encrypt(&nonce, Payload { msg, aad }) {
            Ok(sealed) => [nonce.as_slice(), &sealed].concat(),
            // Only a message of gigabytes fails; an empty value reads as a miss.
            Err(_) => Vec::new(),
        }
    }

    /// Decrypts a value sealed by [`seal`](Self::seal); `None` if it does not open (another
    /// secret, another key or generation, a garbled or truncated value).
    pub(crate) fn open(&self, what: &str, generation: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, msg) = sealed.split_at_checked(NONCE_BYTES)?;
        let nonce = chacha20poly1305::XNonce::try_from(nonce).ok()?;
        let aad = &aad(what, generation);
        self.cipher.decrypt(&nonce, Payload { msg, aad }).ok()
    }
}

fn aad(what: &str, generation: u64) -> Vec<u8> {
    [what.as_bytes(), &generation.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(access: &str, secret: &str) -> Sealer {
        Sealer::new(&Credentials::new(access, secret), "https://api.lengow.io")
    }

    #[test]
    fn a_value_opens_only_with_the_same_secret_key_and_generation() {
        let a = sealer("access", "secret");
        let sealed = a.seal("token", 7, b"the token");
        assert!(!sealed.windows(9).any(|w| w == b"the token"));
        assert_eq!(
            a.open("token", 7, &sealed).as_deref(),
            Some(&b"the token"[..])
        );
        assert_eq!(a.open("token", 8, &sealed), None);
        assert_eq!(a.open("failure", 7, &sealed), None);
        assert_eq!(sealer("access", "other").open("token", 7, &sealed), None);
        let mut garbled = sealed.clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 1;
        assert_eq!(a.open("token", 7, &garbled), None);
        assert_eq!(a.open("token", 7, &sealed[..10]), None);
        assert_eq!(a.open("token", 7, b""), None);
        // A fresh nonce each time.
        assert_ne!(a.seal("token", 7, b"x"), a.seal("token", 7, b"x"));
    }

    #[test]
    fn key_names_hide_the_credentials_and_never_collide() {
        let a = sealer("access-token-a", "secret-a");
        let names = [a.keys().token(), a.keys().lease(), a.keys().failure()];
        for name in names {
            assert!(
                !name.contains("access-token-a") && !name.contains("secret-a"),
                "{name}"
            );
            assert!(
                name.starts_with("lengow-auth:{") && name.contains("}:"),
                "{name}"
            );
        }
        let tag = |s: &Sealer| s.keys().token().to_owned();
        assert_eq!(tag(&a), tag(&sealer("access-token-a", "secret-a")));
        assert_ne!(tag(&a), tag(&sealer("access-token-b", "secret-a")));
        assert_ne!(tag(&a), tag(&sealer("access-token-a", "secret-b")));
        let other_origin = Sealer::new(
            &Credentials::new("access-token-a", "secret-a"),
            "https://api.lengow.net",
        );
        assert_ne!(tag(&a), tag(&other_origin));
    }
}
