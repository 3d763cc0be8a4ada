//! Property tests of the redactor: total, idempotent, and never lets a valid
//! card, IBAN or e-mail address through.

use outpost_protocol::{redact, PiiKind};
use proptest::prelude::*;

use crate::gen::{self, Rng};

/// Characters the detectors care about, to reach their edge cases far more
/// often than arbitrary Unicode does.
const PII_ALPHABET: &str = "[0-9 +().:@a-fA-FSstDE/#,-]{0,80}";

/// Text around a planted item: letters, spaces, punctuation.
const FILLER: &str = "[a-zA-Z ,.!?'()]{0,30}";

/// Real PII and look-alikes glued together by separators the detectors treat
/// specially.
fn pii_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((any::<u64>(), 0usize..8), 1..8).prop_map(|parts| {
        let mut out = String::new();
        for (seed, sep) in parts {
            let mut rng = Rng::new(seed);
            let token = match rng.below(10) {
                0 => gen::card(&mut rng),
                1 => gen::iban(&mut rng),
                2 => gen::email(&mut rng),
                3 => gen::phone(&mut rng),
                4 => gen::ssn(&mut rng),
                5 => gen::ip(&mut rng),
                6 => gen::address(&mut rng),
                7 => gen::timestamp(&mut rng),
                8 => gen::order_number(&mut rng),
                _ => gen::sku(&mut rng),
            };
            out.push_str(&token);
            out.push_str([" ", "", "-", ".", ":", "@", "+", "/"][sep]);
        }
        out
    })
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), PII_ALPHABET, pii_soup()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn redaction_never_panics(text in any_text()) {
        let r = redact(&text);
        prop_assert!(r.found.total() > 0 || r.text.as_str() == text);
    }

    #[test]
    fn redacting_twice_is_the_same_as_redacting_once(text in any_text()) {
        let once = redact(&text);
        let twice = redact(once.text.as_str());
        prop_assert_eq!(twice.text.as_str(), once.text.as_str());
        prop_assert!(twice.found.is_empty());
    }

    #[test]
    fn a_planted_valid_card_is_removed(seed in any::<u64>(), before in FILLER, after in FILLER) {
        let card = gen::card(&mut Rng::new(seed));
        let r = redact(&format!("{before} {card} {after}"));
        prop_assert!(!r.text.as_str().contains(&card), "{} kept {}", r.text, card);
        prop_assert!(r.found.get(PiiKind::Card) >= 1);
    }

    #[test]
    fn a_planted_valid_iban_is_removed(seed in any::<u64>(), before in FILLER, after in FILLER) {
        let iban = gen::iban(&mut Rng::new(seed));
        let r = redact(&format!("{before} {iban} {after}"));
        prop_assert!(!r.text.as_str().contains(&iban), "{} kept {}", r.text, iban);
        prop_assert!(r.found.get(PiiKind::Iban) >= 1);
    }

    #[test]
    fn a_planted_email_is_removed(
        local in "[a-z0-9][a-z0-9._%+-]{0,15}[a-z0-9]",
        domain in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,2}\\.[a-z]{2,6}",
        before in FILLER,
        after in FILLER,
    ) {
        let email = format!("{local}@{domain}");
        let r = redact(&format!("{before} {email} {after}"));
        prop_assert!(!r.text.as_str().contains(&email), "{} kept {}", r.text, email);
        prop_assert!(r.found.get(PiiKind::Email) >= 1);
    }

    #[test]
    fn a_planted_phone_number_is_removed(seed in any::<u64>(), before in FILLER, after in FILLER) {
        let phone = gen::phone(&mut Rng::new(seed));
        let r = redact(&format!("{before} {phone} {after}"));
        prop_assert!(!r.text.as_str().contains(&phone), "{} kept {}", r.text, phone);
    }
}
