//! The detectors: candidate patterns, validation, and overlap resolution.
//!
//! Every detector finds candidates with a regular expression, then keeps the
//! ones that pass a validator from [`super::validate`] and stand alone in the
//! text (not glued to a longer token such as `ORD-2024-118822`). Overlaps are
//! resolved by kind priority, then by length.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use regex::Regex;

use super::validate;
use super::PiiKind;

/// One finding: a byte range of the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) kind: PiiKind,
}

/// Which kind wins an overlap: the more specific, checksum-backed kinds first.
fn priority(kind: PiiKind) -> u8 {
    match kind {
        PiiKind::Email => 0,
        PiiKind::Iban => 1,
        PiiKind::Card => 2,
        PiiKind::Ssn => 3,
        PiiKind::Ip => 4,
        PiiKind::Phone => 5,
        PiiKind::Address => 6,
    }
}

/// The candidate patterns, indexed by [`Pat`].
const PATTERNS: [&str; 12] = [
    // Email
    r"(?i)[a-z0-9._%+\-]+@[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{2,24}",
    // IbanStart: country code and check digits; `iban_end` scans the rest.
    r"(?-u:\b)[A-Za-z]{2}[0-9]{2}",
    // DigitRun: digit groups joined by single spaces or dashes (cards).
    r"[0-9]+(?:[ \-][0-9]+)*",
    // Ssn
    r"([0-9]{3})-([0-9]{2})-([0-9]{4})|([0-9]{3}) ([0-9]{2}) ([0-9]{4})",
    // Ipv4
    r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}",
    // Ipv6: hex digits, dots and at least two colons; std's parser decides.
    r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*",
    // PhoneIntl: +CC, 00CC or (+CC), then groups, optionally a trunk (0).
    r"(?:\+|(?-u:\b)00|\(\+)[1-9][0-9]{0,3}\)?(?:[ .\-]?\(0\))?(?:[ .\-/]?(?:\([0-9]{1,5}\)|[0-9]{1,5})){1,8}",
    // PhoneNanp: (415) 555-0132, 415-555-0132, 1-800-555-0199, ...
    r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}",
    // PhoneNational: trunk-0 numbers (UK, DE, FR, ...).
    r"(?:\(0[1-9][0-9]{0,4}\)|0[1-9][0-9]{0,4})[ /\-.]?[0-9]{2,8}(?:[ \-.][0-9]{2,8}){0,4}",
    // AddressEn: number, then 1-3 capitalised words and a suffix, or one
    // lower-case word and a spelled-out suffix; optional unit and
    // "City, ST 12345".
    concat!(
        r"\b[0-9]{1,5}[A-Za-z]?",
        r"(?:[ ]+(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?)?",
        r"(?:(?:[ ]+(?:[A-Z][a-z]+|[0-9]{1,3}(?:st|nd|rd|th))){1,3}",
        r"[ ]+(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Highway|Hwy|Square|Sq|Circle|Strasse|Straße)",
        r"|[ ]+[a-z]{3,}[ ]+(?:street|avenue|road|lane|boulevard|drive))\b",
        r"(?:,?[ ]+(?:Apt|Apartment|Suite|Ste|Unit)\.?[ ]*#?[0-9A-Za-z]{1,6}\b)?",
        r"(?:,[ ]*[A-Z][a-z]+(?:[ ][A-Z][a-z]+){0,2},?[ ]+[A-Z]{2}[ ]+[0-9]{5}(?:-[0-9]{4})?\b)?",
    ),
    // AddressDe: Hauptstraße 5, Berliner Strasse 12, Karl-Marx-Allee 90.
    concat!(
        r"\b(?:[A-ZÄÖÜ][a-zäöüß]+[ \-]){0,3}",
        r"(?:[A-ZÄÖÜ][a-zäöüß]*(?:straße|strasse|str\.|allee|gasse|platz|weg)|Straße|Strasse|Str\.|Allee|Gasse|Platz|Weg)",
        r"[ ]+[0-9]{1,4}[a-zA-Z]?\b",
        r"(?:,[ ]*[0-9]{5}[ ]+[A-ZÄÖÜ][a-zäöüß]+)?",
    ),
    // AddressFr: 12 rue de la Paix, 5 bis avenue Victor Hugo.
    concat!(
        r"\b[0-9]{1,4}(?:[ ]?(?:bis|ter))?,?[ ]+",
        r"(?i:rue|avenue|av\.|boulevard|bd|place|chemin|impasse|allée|quai|route)[ ]+",
        r"(?:(?:de|du|des|la|le|les)[ ]+|l'|d')*",
        r"[A-ZÀ-Ý][\p{L}\-']+(?:[ ]+[A-ZÀ-Ý][\p{L}\-']+){0,2}",
    ),
];

/// Index into [`PATTERNS`].
#[derive(Debug, Clone, Copy)]
enum Pat {
    Email,
    IbanStart,
    DigitRun,
    Ssn,
    Ipv4,
    Ipv6,
    PhoneIntl,
    PhoneNanp,
    PhoneNational,
    AddressEn,
    AddressDe,
    AddressFr,
}

fn compile(pattern: &str) -> Regex {
    // The patterns are constants checked by `every_pattern_compiles`; a typo
    // is a bug caught by the first test run, never input-dependent.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in PII pattern: {e}"))
}

static REGEXES: LazyLock<[Regex; 12]> = LazyLock::new(|| PATTERNS.map(compile));

fn re(pat: Pat) -> &'static Regex {
    &REGEXES[pat as usize]
}

/// What may sit right next to a candidate.
struct Boundary {
    /// Characters that glue the candidate to an alphanumeric before them
    /// (`ORD-` in `ORD-2024-...`).
    glue_before: &'static str,
    /// Characters that glue it to an alphanumeric after them (`:45` in a
    /// time, `.5` in a longer dotted number).
    glue_after: &'static str,
    /// Characters that may not precede the candidate at all.
    reject_before: &'static str,
}

const NUMBER: Boundary = Boundary {
    glue_before: "-./_",
    glue_after: "-./_:",
    reject_before: "+",
};
const DOTTED: Boundary = Boundary {
    glue_before: ".",
    glue_after: ".",
    reject_before: "",
};
const PLUS_PREFIXED: Boundary = Boundary {
    glue_before: "",
    glue_after: "-./_:",
    reject_before: "",
};

fn stands_alone(text: &str, start: usize, end: usize, boundary: &Boundary) -> bool {
    let mut before = text[..start].chars().rev();
    let glued_before = match before.next() {
        Some(c) if c.is_alphanumeric() || boundary.reject_before.contains(c) => true,
        Some(c) if boundary.glue_before.contains(c) => {
            before.next().is_some_and(char::is_alphanumeric)
        }
        _ => false,
    };
    let mut after = text[end..].chars();
    let glued_after = match after.next() {
        Some(c) if c.is_alphanumeric() => true,
        Some(c) if boundary.glue_after.contains(c) => {
            after.next().is_some_and(char::is_alphanumeric)
        }
        _ => false,
    };
    !glued_before && !glued_after
}

fn digits_of(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn emails(text: &str, out: &mut Vec<Span>) {
    if !text.contains('@') {
        return;
    }
    for m in re(Pat::Email).find_iter(text) {
        // The local part may not start with a dot; trim it off rather than
        // drop the address.
        let start = m.start() + m.as_str().len() - m.as_str().trim_start_matches('.').len();
        out.push(Span {
            start,
            end: m.end(),
            kind: PiiKind::Email,
        });
    }
}

/// Scans an IBAN starting at `start` (country code and check digits matched):
/// compact, or in groups of four separated by single spaces or dashes.
fn iban_end(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let country = text.get(start..start + 2)?.to_ascii_uppercase();
    let len = validate::iban_length(&country)?;
    let mut compact = String::with_capacity(len);
    let mut group = 0;
    let mut i = start;
    while compact.len() < len {
        let b = *bytes.get(i)?;
        if b.is_ascii_alphanumeric() {
            compact.push(char::from(b.to_ascii_uppercase()));
            group += 1;
        } else if (b == b' ' || b == b'-') && group == 4 {
            group = 0;
        } else {
            return None;
        }
        i += 1;
    }
    if bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    validate::iban_valid(&compact).then_some(i)
}

fn ibans(text: &str, out: &mut Vec<Span>) {
    for m in re(Pat::IbanStart).find_iter(text) {
        if let Some(end) = iban_end(text, m.start()) {
            out.push(Span {
                start: m.start(),
                end,
                kind: PiiKind::Iban,
            });
        }
    }
}

/// Byte ranges of the digit groups in a run such as `4111 1111-1111`.
fn groups(run: &str, offset: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut start = None;
    for (i, b) in run.bytes().enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                groups.push((offset + s, offset + i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        groups.push((offset + s, offset + run.len()));
    }
    groups
}

/// Cards: within each run of digit groups, the leftmost-longest window of
/// whole groups that is 13–19 digits, Luhn-valid, with a plausible issuer.
fn cards(text: &str, out: &mut Vec<Span>) {
    for run in re(Pat::DigitRun).find_iter(text) {
        if run.len() < 13 {
            continue;
        }
        let groups = groups(run.as_str(), run.start());
        let mut i = 0;
        while i < groups.len() {
            // Grow the window group by group while it can still be a card;
            // keep the longest that validates.
            let mut digits = String::with_capacity(19);
            let mut best = None;
            for (j, &(start, end)) in groups.iter().enumerate().skip(i) {
                digits.push_str(&text[start..end]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13
                    && validate::card_valid(&digits)
                    && stands_alone(text, groups[i].0, end, &NUMBER)
                {
                    best = Some(j);
                }
            }
            match best {
                Some(j) => {
                    out.push(Span {
                        start: groups[i].0,
                        end: groups[j].1,
                        kind: PiiKind::Card,
                    });
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
}

fn ssns(text: &str, out: &mut Vec<Span>) {
    for m in re(Pat::Ssn).find_iter(text) {
        // The pattern fixes the shape: 3 digits, separator, 2, separator, 4.
        let s = m.as_str();
        if validate::ssn_valid(&s[0..3], &s[4..6], &s[7..11])
            && stands_alone(text, m.start(), m.end(), &NUMBER)
        {
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Ssn,
            });
        }
    }
}

/// Words after which a dotted quad is a version, not an address.
const VERSION_WORDS: [&str; 6] = ["version", "ver", "build", "firmware", "release", "v"];

fn preceded_by_version_word(text: &str, start: usize) -> bool {
    let before = text[..start].trim_end_matches([' ', ':']);
    let word_start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !c.is_alphabetic())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[word_start..];
    VERSION_WORDS.iter().any(|v| word.eq_ignore_ascii_case(v))
}

fn ips(text: &str, out: &mut Vec<Span>) {
    let dotted = text.contains('.');
    for m in re(Pat::Ipv4).find_iter(if dotted { text } else { "" }) {
        if validate::ipv4_valid(m.as_str())
            && stands_alone(text, m.start(), m.end(), &DOTTED)
            && !preceded_by_version_word(text, m.start())
        {
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Ip,
            });
        }
    }
    let colons = text.bytes().filter(|&b| b == b':').count();
    for m in re(Pat::Ipv6).find_iter(if colons >= 2 { text } else { "" }) {
        let raw = m.as_str();
        let trimmed = raw.trim_start_matches('.');
        let start = m.start() + raw.len() - trimmed.len();
        let candidate = trimmed.trim_end_matches('.');
        let end = start + candidate.len();
        let plausible = candidate.bytes().any(|b| b.is_ascii_hexdigit())
            && (candidate.contains("::") || candidate.bytes().filter(|&b| b == b':').count() == 7);
        if plausible
            && candidate.parse::<Ipv6Addr>().is_ok()
            && stands_alone(
                text,
                start,
                end,
                &Boundary {
                    glue_before: "",
                    glue_after: "",
                    reject_before: "",
                },
            )
        {
            out.push(Span {
                start,
                end,
                kind: PiiKind::Ip,
            });
        }
    }
}

/// Ends of the digit groups inside a phone candidate (after a digit or `)`
/// that is followed by a separator or the end), longest first.
fn group_ends(candidate: &str) -> Vec<usize> {
    let bytes = candidate.as_bytes();
    let mut ends: Vec<usize> = (1..=bytes.len())
        .filter(|&i| {
            (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b')')
                && bytes
                    .get(i)
                    .is_none_or(|b| !b.is_ascii_digit() && *b != b')')
        })
        .collect();
    ends.reverse();
    ends
}

fn intl_phone_ok(candidate: &str) -> bool {
    let digits = digits_of(candidate.strip_prefix("00").unwrap_or(candidate));
    (8..=15).contains(&digits.len())
}

/// North American numbers: ten digits, or eleven with the leading 1.
fn nanp_phone_ok(candidate: &str) -> bool {
    (10..=11).contains(&digits_of(candidate).len())
}

/// National numbers with a trunk 0 (UK, DE, FR and most of Europe): 10–12
/// digits, and after the area code one consistent separator.
fn national_phone_ok(candidate: &str) -> bool {
    let digits = digits_of(candidate).len();
    if !(10..=12).contains(&digits) {
        return false;
    }
    // Separators after the first group must agree ("01 23 45 67 89", not the
    // "01.05.2024 13" of a date and time).
    let mut seps = candidate
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '(' || c == ')')
        .chars()
        .skip(1)
        .filter(|c| !c.is_ascii_digit());
    match seps.next() {
        Some(first) => seps.all(|c| c == first),
        None => true,
    }
}

/// One phone number format: its pattern, its validator, its boundary rules.
struct PhoneFormat {
    pat: Pat,
    valid: fn(&str) -> bool,
    boundary: &'static Boundary,
}

const PHONE_FORMATS: [PhoneFormat; 3] = [
    PhoneFormat {
        pat: Pat::PhoneIntl,
        valid: intl_phone_ok,
        boundary: &PLUS_PREFIXED,
    },
    PhoneFormat {
        pat: Pat::PhoneNanp,
        valid: nanp_phone_ok,
        boundary: &NUMBER,
    },
    PhoneFormat {
        pat: Pat::PhoneNational,
        valid: national_phone_ok,
        boundary: &NUMBER,
    },
];

fn phones(text: &str, out: &mut Vec<Span>) {
    let international = text.contains('+') || text.contains("00");
    for PhoneFormat {
        pat,
        valid,
        boundary,
    } in &PHONE_FORMATS
    {
        if matches!(pat, Pat::PhoneIntl) && !international {
            continue;
        }
        let (pat, valid, boundary) = (*pat, *valid, *boundary);
        for m in re(pat).find_iter(text) {
            let candidate = m.as_str();
            let accepted = group_ends(candidate).into_iter().find(|&len| {
                valid(&candidate[..len]) && stands_alone(text, m.start(), m.start() + len, boundary)
            });
            if let Some(len) = accepted {
                out.push(Span {
                    start: m.start(),
                    end: m.start() + len,
                    kind: PiiKind::Phone,
                });
            }
        }
    }
}

/// Words one of which every German address pattern contains.
const DE_HINTS: [&str; 6] = ["stra", "str.", "allee", "gasse", "platz", "weg"];
/// Words one of which every French address pattern contains.
const FR_HINTS: [&str; 11] = [
    "rue",
    "avenue",
    "av.",
    "boulevard",
    "bd",
    "place",
    "chemin",
    "impasse",
    "allée",
    "quai",
    "route",
];

fn addresses(text: &str, out: &mut Vec<Span>) {
    // The German and French patterns are the costliest (Unicode classes);
    // skip them unless a street word is present.
    let lower = text.to_lowercase();
    let hinted = |hints: &[&str]| hints.iter().any(|h| lower.contains(h));
    let patterns = [
        (Pat::AddressEn, true),
        (Pat::AddressDe, hinted(&DE_HINTS)),
        (Pat::AddressFr, hinted(&FR_HINTS)),
    ];
    for (pat, _) in patterns.into_iter().filter(|&(_, worth_it)| worth_it) {
        for m in re(pat).find_iter(text) {
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Address,
            });
        }
    }
}

/// Every PII span in `text`, non-overlapping, in text order.
pub(super) fn find(text: &str) -> Vec<Span> {
    // Every detector needs a digit, an `@` or a `:`; most text has none worth
    // scanning for.
    if !text
        .bytes()
        .any(|b| b.is_ascii_digit() || b == b'@' || b == b':')
    {
        return Vec::new();
    }
    let mut candidates = Vec::new();
    emails(text, &mut candidates);
    ibans(text, &mut candidates);
    cards(text, &mut candidates);
    ssns(text, &mut candidates);
    ips(text, &mut candidates);
    phones(text, &mut candidates);
    addresses(text, &mut candidates);
    candidates.retain(|s| s.start < s.end);
    candidates.sort_by_key(|s| {
        (
            priority(s.kind),
            std::cmp::Reverse(s.end - s.start),
            s.start,
        )
    });
    let mut accepted: Vec<Span> = Vec::with_capacity(candidates.len());
    for span in candidates {
        if accepted
            .iter()
            .all(|a| span.end <= a.start || a.end <= span.start)
        {
            accepted.push(span);
        }
    }
    accepted.sort_by_key(|s| s.start);
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        LazyLock::force(&REGEXES);
        assert_eq!(REGEXES.len(), Pat::AddressFr as usize + 1);
    }

    fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
        find(text)
            .into_iter()
            .map(|s| (s.kind, &text[s.start..s.end]))
            .collect()
    }

    #[test]
    fn a_card_followed_by_an_expiry_date_is_still_found() {
        assert_eq!(
            kinds("card 4111111111111111 12 25 please"),
            [(PiiKind::Card, "4111111111111111")]
        );
        assert_eq!(
            kinds("order 12 4111 1111 1111 1111"),
            [(PiiKind::Card, "4111 1111 1111 1111")]
        );
    }

    #[test]
    fn a_grouped_iban_stops_at_its_country_length() {
        assert_eq!(
            kinds("IBAN DE89 3704 0044 0532 0130 00 was debited"),
            [(PiiKind::Iban, "DE89 3704 0044 0532 0130 00")]
        );
        assert_eq!(kinds("DE89370400440532013000X"), []);
    }

    #[test]
    fn version_words_keep_dotted_quads_out_of_the_ip_detector() {
        assert_eq!(
            kinds("firmware 4.2.1.7 on 10.0.0.12"),
            [(PiiKind::Ip, "10.0.0.12")]
        );
        assert_eq!(
            kinds("host fe80::1ff:fe23:4567:890a, port 22"),
            [(PiiKind::Ip, "fe80::1ff:fe23:4567:890a")]
        );
        assert_eq!(kinds("at 13:45:10 and 2024-05-01T13:45:10Z"), []);
    }

    #[test]
    fn phone_formats_of_several_countries_are_found_whole() {
        for phone in [
            "+1 (415) 555-0132",
            "(415) 555-0132",
            "415-555-0132",
            "1-800-555-0199",
            "+44 20 7946 0958",
            "020 7946 0958",
            "07911 123456",
            "+49 (0)30 1234 5678",
            "030 12345678",
            "030/1234 5678",
            "0151 23456789",
            "+33 6 12 34 56 78",
            "01 23 45 67 89",
            "06.12.34.56.78",
            "+14155550132",
            "0044 20 7946 0958",
        ] {
            let text = format!("call {phone} today");
            assert_eq!(kinds(&text), [(PiiKind::Phone, phone)], "{phone}");
        }
    }

    #[test]
    fn order_numbers_dates_skus_and_prices_are_not_phones() {
        for clean in [
            "ORD-2024-118822",
            "2024-05-01 13:45:10",
            "01.05.2024 13:45",
            "SKU-88-1024-B",
            "SKU-555-123-4567",
            "$1,299.99",
            "1714571110",
            "1714571110123",
            "KX-500",
            "v2.10.3",
        ] {
            assert_eq!(kinds(clean), [], "{clean}");
        }
    }

    #[test]
    fn street_addresses_in_english_german_and_french_forms() {
        for address in [
            "221B Baker Street",
            "1600 Pennsylvania Avenue",
            "350 5th Avenue",
            "42 W Elm St, Springfield, IL 62704",
            "Hauptstraße 5",
            "Karl-Marx-Allee 90",
            "Berliner Strasse 12, 10115 Berlin",
            "12 rue de la Paix",
        ] {
            let text = format!("send it to {address} please");
            assert_eq!(kinds(&text), [(PiiKind::Address, address)], "{address}");
        }
    }
}
