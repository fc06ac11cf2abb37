//! The console's second factor: time-based one-time codes (RFC 6238, the
//! 30-second, 6-digit, SHA-1 kind every authenticator app reads from a QR
//! code) and one-use recovery codes, of which only hashes are kept.

use std::collections::HashMap;
use std::sync::Mutex;

use password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, TOTP};

/// Shown in the authenticator app beside the account name.
const ISSUER: &str = "Vitals";
/// Codes of the step before and after now are accepted too (clock drift).
const SKEW_STEPS: i64 = 1;
const STEP_SECS: u64 = 30;
pub const RECOVERY_CODES: usize = 10;

/// A new secret: 160 random bits, base32 as apps take it.
pub fn new_secret() -> String {
    let mut b = [0u8; 20];
    OsRng.fill_bytes(&mut b);
    Secret::Raw(b.to_vec()).to_encoded().to_string()
}

fn totp(secret: &str, account: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret.to_owned()).to_bytes().ok()?;
    TOTP::new_unchecked(
        Algorithm::SHA1,
        6,
        1,
        STEP_SECS,
        bytes,
        Some(ISSUER.to_owned()),
        account.to_owned(),
    )
    .into()
}

/// The `otpauth://` URL an app reads from the QR code.
pub fn url(secret: &str, account: &str) -> String {
    totp(secret, account)
        .map(|t| t.get_url())
        .unwrap_or_default()
}

/// The QR code of `url`, as inline SVG (no script, no image request).
pub fn qr_svg(url: &str) -> String {
    qrcode::QrCode::new(url.as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default()
}

/// The time step a code belongs to, if `code` is right for `secret` at
/// `now_secs` (give or take one step).
pub fn check(secret: &str, account: &str, code: &str, now_secs: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, account)?;
    let step = (now_secs / STEP_SECS) as i64;
    (step - SKEW_STEPS..=step + SKEW_STEPS)
        .filter(|s| *s >= 0)
        .find(|s| super::sessions::same_token(&t.generate(*s as u64 * STEP_SECS), &code))
        .map(|s| s as u64)
}

/// The code for `secret` at `now_secs` (tests and benchmarks sign in with it).
pub fn code_at(secret: &str, account: &str, now_secs: u64) -> String {
    totp(secret, account)
        .map(|t| t.generate(now_secs))
        .unwrap_or_default()
}

/// Recovery codes as shown once (`xxxxx-xxxxx`), and their hashes to keep.
pub fn recovery_codes() -> (Vec<String>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let code: String = super::accounts::one_time_password()
                .chars()
                .take(11)
                .collect();
            let hashed = recovery_hash(&code);
            (code, hashed)
        })
        .unzip()
}

/// How a recovery code is kept: SHA-256 of it without dashes or spaces,
/// case kept (the codes are random, so a fast hash is enough).
pub fn recovery_hash(code: &str) -> String {
    let norm: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    Sha256::digest(norm.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The last step each account signed in with, so a code seen once (over a
/// shoulder, in a proxy's log) cannot be used again.
#[derive(Default)]
pub struct Replays(Mutex<HashMap<String, u64>>);

impl Replays {
    /// Records `step` for `account`; false if that step (or a later one)
    /// was used already.
    pub fn fresh(&self, account: &str, step: u64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(account) {
            Some(last) if *last >= step => false,
            _ => {
                m.insert(account.to_owned(), step);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_rfc_6238_and_allow_one_step_of_drift() {
        // RFC 6238, appendix B: the SHA-1 secret "12345678901234567890" at
        // 59 s gives 94287082 (8 digits); its last six are 287082.
        let secret = Secret::Raw(b"12345678901234567890".to_vec())
            .to_encoded()
            .to_string();
        assert_eq!(code_at(&secret, "ana", 59), "287082");
        assert_eq!(check(&secret, "ana", "287 082", 59), Some(1));
        assert_eq!(check(&secret, "ana", "287082", 59 + 30), Some(1));
        assert_eq!(check(&secret, "ana", "287082", 59 + 90), None);
        assert_eq!(check(&secret, "ana", "28708", 59), None);
        assert_eq!(check(&secret, "ana", "abcdef", 59), None);
        assert!(url(&secret, "ana").starts_with("otpauth://totp/Vitals:ana?secret="));
        assert!(qr_svg(&url(&secret, "ana")).contains("<svg"));
    }

    #[test]
    fn a_code_is_good_once_and_recovery_codes_are_kept_as_hashes() {
        let r = Replays::default();
        assert!(r.fresh("ana", 10));
        assert!(!r.fresh("ana", 10));
        assert!(!r.fresh("ana", 9));
        assert!(r.fresh("ana", 11));
        assert!(r.fresh("sam", 10));
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 11);
        assert_eq!(recovery_hash(&codes[3]), hashes[3]);
        assert_eq!(
            recovery_hash(&format!(" {} ", codes[3].replace('-', ""))),
            hashes[3]
        );
        assert!(!hashes.contains(&codes[3]));
    }
}
