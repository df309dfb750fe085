//! The linking QR text: wafleet's matches Baileys' `buildPairingQRData` for the same keys,
//! and Baileys' parses back to the same keys.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use wafleet_interop::Peer;
use wafleet_protocol::qr::{ClientType, PairingQr};

#[test]
fn qr_text_matches_baileys() {
    let mut peer = Peer::start();
    let mut rng = StdRng::seed_from_u64(4);
    let browsers = [
        (["Mac OS", "Chrome"], ClientType::Chrome),
        (["Windows", "Edge"], ClientType::Edge),
        (["Ubuntu", "Firefox"], ClientType::Firefox),
        (["Mac OS", "Safari"], ClientType::Safari),
        (["Windows", "Desktop"], ClientType::Uwp),
        (["Mac OS", "Desktop"], ClientType::Electron),
        (["Ubuntu", "wafleet"], ClientType::OtherWeb),
    ];
    for i in 0..50 {
        let (browser, client_type) = browsers[i % browsers.len()];
        let mut key = || {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            k
        };
        let qr = PairingQr {
            reference: format!("2@{i}QzLk+/ab=="),
            noise_public: key(),
            identity_public: key(),
            adv_secret: key(),
            client_type,
        };
        let reply = peer.call(json!({
            "op": "qr_text", "ref": qr.reference, "browser": browser,
            "noise": hex::encode(qr.noise_public), "identity": hex::encode(qr.identity_public),
            "adv": hex::encode(qr.adv_secret),
        }));
        let theirs = reply["text"].as_str().expect("text");
        assert_eq!(qr.to_text(), theirs, "QR {i} ({browser:?})");
        assert!(PairingQr::parse(theirs).expect("Baileys' QR parses") == qr);
    }
}
