//! PII redaction: the only way text reaches the wire.
//!
//! [`redact`] replaces e-mail addresses, phone numbers, payment cards, IBANs,
//! US social security numbers, IP addresses and street addresses with typed
//! placeholders (`<EMAIL>`, `<PHONE>`, …) and counts what it replaced. Its
//! result, [`RedactedText`], is the only text type in the wire messages and
//! has no other constructor, so raw customer text cannot be put on the wire
//! by mistake; decoding a `RedactedText` redacts again, so a peer cannot slip
//! raw text past the type either.
//!
//! Candidates are found by regular expressions and kept only when a pure
//! validator from [`validate`] agrees (Luhn and issuer prefixes for cards,
//! mod-97 for IBANs, the SSA rules for SSNs, octet ranges for IPv4, digit
//! counts for phones) and they are not part of a longer token, so order
//! numbers (`ORD-2024-118822`), timestamps, SKUs, versions and prices stay.
//!
//! E-mail addresses written to dodge spam filters (`bob [at] example [dot]
//! com`, `bob at example dot com`) count as e-mail. Names and national ids
//! other than SSNs (a UK National Insurance number, say) are not detected;
//! `protocol/tests/pii_corpus/` measures what is and is not found.
//!
//! Redaction is idempotent: it repeats until a pass finds nothing. That ends
//! because every finding contains a digit, `@`, `:` or an obfuscation marker
//! (`[at]`, `(at)`, a spaced `at`), no placeholder does, and a placeholder's
//! `<` and `>` cannot join its neighbours into a new one.

mod detect;
pub mod validate;

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A kind of personal data the redactor recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PiiKind {
    /// An e-mail address.
    Email,
    /// A phone number, international or in a common national format.
    Phone,
    /// A payment card number.
    Card,
    /// An international bank account number.
    Iban,
    /// A US social security number.
    Ssn,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A street address.
    Address,
}

impl PiiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::Ssn,
        PiiKind::Ip,
        PiiKind::Address,
    ];

    /// The placeholder that replaces it, e.g. `<CARD>`.
    pub const fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "<EMAIL>",
            PiiKind::Phone => "<PHONE>",
            PiiKind::Card => "<CARD>",
            PiiKind::Iban => "<IBAN>",
            PiiKind::Ssn => "<SSN>",
            PiiKind::Ip => "<IP>",
            PiiKind::Address => "<ADDRESS>",
        }
    }

    /// A stable lowercase name, also used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::Ssn => "ssn",
            PiiKind::Ip => "ip",
            PiiKind::Address => "address",
        }
    }

    const fn index(self) -> usize {
        match self {
            PiiKind::Email => 0,
            PiiKind::Phone => 1,
            PiiKind::Card => 2,
            PiiKind::Iban => 3,
            PiiKind::Ssn => 4,
            PiiKind::Ip => 5,
            PiiKind::Address => 6,
        }
    }
}

impl fmt::Display for PiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a list of PII counts from the wire was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PII counts must list each kind at most once, in order, with non-zero counts")]
pub struct PiiCountsError;

/// How many of each kind a redaction replaced: `(kind, count)` pairs in
/// [`PiiKind`] order, each kind at most once, no zero counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<(PiiKind, u32)>")]
pub struct PiiCounts(Vec<(PiiKind, u32)>);

impl PiiCounts {
    /// No findings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` findings of `kind` (saturating).
    pub fn add(&mut self, kind: PiiKind, n: u32) {
        if n == 0 {
            return;
        }
        match self.0.binary_search_by_key(&kind, |&(k, _)| k) {
            Ok(i) => self.0[i].1 = self.0[i].1.saturating_add(n),
            Err(i) => self.0.insert(i, (kind, n)),
        }
    }

    /// How many of `kind`.
    pub fn get(&self, kind: PiiKind) -> u32 {
        self.0
            .binary_search_by_key(&kind, |&(k, _)| k)
            .map_or(0, |i| self.0[i].1)
    }

    /// All findings together (saturating).
    pub fn total(&self) -> u32 {
        self.0
            .iter()
            .fold(0u32, |acc, &(_, n)| acc.saturating_add(n))
    }

    /// The `(kind, count)` pairs.
    pub fn as_slice(&self) -> &[(PiiKind, u32)] {
        &self.0
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<(PiiKind, u32)>> for PiiCounts {
    type Error = PiiCountsError;
    fn try_from(pairs: Vec<(PiiKind, u32)>) -> Result<Self, PiiCountsError> {
        let ordered = pairs.windows(2).all(|w| w[0].0 < w[1].0);
        if ordered && pairs.iter().all(|&(_, n)| n > 0) {
            Ok(Self(pairs))
        } else {
            Err(PiiCountsError)
        }
    }
}

/// Text that has been through [`redact`]. It is the only text type the wire
/// messages carry; its only constructor is [`redact`], and deserializing one
/// redacts again.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedactedText(String);

impl RedactedText {
    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Gives back the owned text.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RedactedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedText({:?})", self.0)
    }
}

impl AsRef<str> for RedactedText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for RedactedText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RedactedText {
    /// Redacts what arrives: idempotent for text that was redacted by the
    /// sender, and a safety net for a sender that did not.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(redact(&raw).text)
    }
}

/// The result of [`redact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// The text with every finding replaced by its placeholder.
    pub text: RedactedText,
    /// What was replaced, for telemetry.
    pub found: PiiCounts,
}

/// One piece of personal data found in a text: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its byte range in the scanned text.
    pub range: Range<usize>,
    /// What it is.
    pub kind: PiiKind,
}

/// What the first pass of [`redact`] replaces in `text`: non-overlapping
/// findings in text order. This exists to measure the detectors span by
/// span (see `protocol/tests/pii_corpus`); [`redact`] is what protects
/// text, and it repeats passes until nothing is found.
pub fn find_pii(text: &str) -> Vec<Finding> {
    detect::find(text)
        .into_iter()
        .map(|span| Finding {
            range: span.start..span.end,
            kind: span.kind,
        })
        .collect()
}

/// Replaces every recognised piece of personal data in `text` with its
/// [`PiiKind::placeholder`]. Never panics; `redact(redact(x).text)` finds
/// nothing more.
pub fn redact(text: &str) -> Redaction {
    let mut counts = [0u32; PiiKind::ALL.len()];
    let mut current = text.to_owned();
    loop {
        let spans = detect::find(&current);
        if spans.is_empty() {
            break;
        }
        let mut next = String::with_capacity(current.len());
        let mut copied = 0;
        for span in spans {
            next.push_str(&current[copied..span.start]);
            next.push_str(span.kind.placeholder());
            counts[span.kind.index()] = counts[span.kind.index()].saturating_add(1);
            copied = span.end;
        }
        next.push_str(&current[copied..]);
        current = next;
    }
    let mut found = PiiCounts::new();
    for kind in PiiKind::ALL {
        found.add(kind, counts[kind.index()]);
    }
    Redaction {
        text: RedactedText(current),
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_support_sentence_from_the_design_loses_its_card_but_keeps_the_order() {
        let r = redact("My card 4111 1111 1111 1111 was charged twice for order ORD-2024-118822");
        assert_eq!(
            r.text.as_str(),
            "My card <CARD> was charged twice for order ORD-2024-118822"
        );
        assert_eq!(r.found.as_slice(), [(PiiKind::Card, 1)]);
    }

    #[test]
    fn every_kind_gets_its_own_placeholder_and_count() {
        let r = redact(
            "Mail jo.doe+kiosk@example.co.uk or call +44 20 7946 0958; IBAN GB29 NWBK 6016 1331 9268 19, \
             SSN 123-45-6789, host 192.168.1.10, ship to 10 Downing Street.",
        );
        assert_eq!(
            r.text.as_str(),
            "Mail <EMAIL> or call <PHONE>; IBAN <IBAN>, SSN <SSN>, host <IP>, ship to <ADDRESS>."
        );
        for kind in [
            PiiKind::Email,
            PiiKind::Phone,
            PiiKind::Iban,
            PiiKind::Ssn,
            PiiKind::Ip,
            PiiKind::Address,
        ] {
            assert_eq!(r.found.get(kind), 1, "{kind}");
        }
        assert_eq!(r.found.total(), 6);
    }

    #[test]
    fn invalid_ssns_are_left_alone() {
        for text in [
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert_eq!(redact(text).text.as_str(), text);
        }
    }

    #[test]
    fn text_without_pii_comes_back_unchanged() {
        let text =
            "Firmware v2.4.1 on KX-500 (SKU-88-1024-B) since 2024-05-01 13:45:10, price $1,299.99";
        let r = redact(text);
        assert_eq!(r.text.as_str(), text);
        assert!(r.found.is_empty());
    }

    #[test]
    fn decoding_redacted_text_redacts_again() {
        let text = decode_from_peer("call 415-555-0132");
        assert_eq!(text.as_str(), "call <PHONE>");
    }

    /// Deserializes a string through serde's value deserializer, standing in
    /// for a peer that put raw text on the wire.
    fn decode_from_peer(raw: &str) -> RedactedText {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let de: StrDeserializer<'_, Error> = raw.into_deserializer();
        RedactedText::deserialize(de).expect("strings deserialize")
    }

    #[test]
    fn pii_counts_from_the_wire_must_be_ordered_and_non_zero() {
        assert!(PiiCounts::try_from(vec![(PiiKind::Email, 1), (PiiKind::Card, 2)]).is_ok());
        assert!(PiiCounts::try_from(vec![(PiiKind::Card, 1), (PiiKind::Email, 2)]).is_err());
        assert!(PiiCounts::try_from(vec![(PiiKind::Card, 0)]).is_err());
        assert!(PiiCounts::try_from(vec![(PiiKind::Card, 1), (PiiKind::Card, 1)]).is_err());
    }
}
