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
const PATTERNS: [&str; 18] = [
    // Email
    r"(?i)[\p{L}\p{N}._%+\-']+@[\p{L}\p{N}](?:[\p{L}\p{N}\-]*[\p{L}\p{N}])?(?:\.[\p{L}\p{N}](?:[\p{L}\p{N}\-]*[\p{L}\p{N}])?)*\.[a-z]{2,24}",
    // IbanStart: country code and check digits; `iban_end` scans the rest.
    r"(?-u:\b)[A-Za-z]{2}[0-9]{2}",
    // DigitRun: digit groups joined by a space, two spaces, a dash or a dot
    // (cards).
    r"[0-9]+(?:(?:[ \-.]|  )[0-9]+)*",
    // Ssn
    r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}|[0-9]{3}\.[0-9]{2}\.[0-9]{4}",
    // Ipv4
    r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}",
    // Ipv6: hex digits, dots and at least two colons; std's parser decides.
    r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*",
    // PhoneIntl: +CC, 00CC or (+CC), then groups, optionally a trunk (0).
    r"(?:\+|(?-u:\b)00|\(\+)[1-9][0-9]{0,3}\)?(?:[ .\-]?\(0\))?(?:(?:[ .\-/]|  )?(?:\([0-9]{1,5}\)|[0-9]{1,5})){1,8}",
    // PhoneNanp: (415) 555-0132, 415-555-0132, 1-800-555-0199, ...
    r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}(?:[ .\-]| - ))[0-9]{3}(?:[ .\-]| - )[0-9]{4}",
    // PhoneNational: trunk-0 numbers (UK, DE, FR, ...).
    r"(?:\(0[1-9][0-9]{0,4}\)|0[1-9][0-9]{0,4})[ /\-.]?[0-9]{2,8}(?:[ \-.][0-9]{2,8}){0,4}",
    // AddressEn: number, then 1-3 capitalised words and a suffix, or one
    // lower-case word and a spelled-out suffix; optional unit and
    // "City, ST 12345".
    concat!(
        r"\b[0-9]{1,5}[A-Za-z]?",
        r"(?:[ ]+(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?)?",
        r"(?:(?:[ ]+(?:[A-Z][a-z]+|[0-9]{1,3}(?:st|nd|rd|th))){1,3}",
        // An abbreviated suffix may keep its dot ("Main St. Apt 4B").
        r"[ ]+(?:(?:Street|Avenue|Road|Lane|Boulevard|Drive|Court|Way|Place|Terrace|Parkway|Highway|Square|Circle|Strasse|Straße)\b",
        r"|(?:St|Ave|Rd|Ln|Blvd|Dr|Ct|Pl|Pkwy|Hwy|Sq)\b\.?)",
        r"|[ ]+[a-z]{3,}[ ]+(?:(?:street|avenue|road|lane|boulevard|drive)\b|(?:st|ave|rd|blvd)\b\.?))",
        r"(?:[ ]+(?:NE|NW|SE|SW|ne|nw|se|sw)\b)?",
        r"(?:,?[ ]+(?:Apt|Apartment|Suite|Ste|Unit)\.?[ ]*#?[0-9A-Za-z]{1,6}\b)?",
        // "City, ST 12345" (US) or "City AB1 2CD" (a UK postcode).
        r"(?:,[ ]*[A-Z][a-z]+(?:[ ][A-Z][a-z]+){0,2}",
        r"(?:,?[ ]+[A-Z]{2}[ ]+[0-9]{5}(?:-[0-9]{4})?|[ ]+[A-Z]{1,2}[0-9][A-Z0-9]?[ ]?[0-9][A-Z]{2})\b)?",
    ),
    // AddressDe: Hauptstraße 5, Berliner Strasse 12, Karl-Marx-Allee 90.
    concat!(
        r"\b(?:[A-ZÄÖÜ][a-zäöüß]+[ \-]){0,3}",
        // German suffixes, and Dutch ones (Kerkstraat, Dorpsweg, Parklaan).
        r"(?:[A-ZÄÖÜ][a-zäöüß]*(?:straße|strasse|str\.|allee|gasse|platz|weg|straat|laan|gracht|plein)|Straße|Strasse|Str\.|Allee|Gasse|Platz|Weg)",
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
    // AddressSouth: Calle Mayor 10, Piazza Navona 5, Rua Augusta 24 (the
    // street word first, the number last; "Via" is left out, it is also an
    // English word).
    concat!(
        r"\b(?:Calle|Avenida|Plaza|Paseo|Carrer|Rua|Piazza|Viale|Corso|Largo)[ ]+",
        r"(?:(?:de|del|la|las|los|di|della|dei|da|do|dos)[ ]+)*",
        r"[A-ZÀ-Ý][\p{L}\-']+(?:[ ]+[A-ZÀ-Ý][\p{L}\-']+){0,2},?[ ]+[0-9]{1,4}[a-zA-Z]?\b",
    ),
    // AddressPoBox: PO Box 1234, P.O. Box 77, Postfach 10 01 23.
    r"\b(?:P\.[ ]?O\.|PO|P[ ]O)[ ]+Box[ ]+[0-9]{1,6}\b|\bPostfach[ ]+[0-9]{1,6}(?:[ ][0-9]{2}){0,2}\b",
    // SsnLabelled: nine bare digits right after an SSN label; the label is
    // what makes them an SSN rather than any nine-digit number.
    r"(?i)\b(?:ssn|social[ ]security(?:[ ](?:number|no\.?|#))?|soc\.?[ ]?sec\.?(?:[ ]no\.?)?)[ ]*[:#=]?[ ]*([0-9]{9})\b",
    // PhoneLabelled: a bare digit run right after a phone word ("cell
    // 2025550143"); without the word, ten digits are as likely an order.
    r"(?i)\b(?:phone|tel|telephone|mobile|mob|cell|call|ring|whatsapp|ph|fax|handy|mobil|portable|my[ ]number)\b\.?[ ]*(?:no\.?|nr\.?|#)?[ ]*[:=]?[ ]*(\+?[0-9]{8,15})\b",
    // EmailObfuscated: "bob [at] example [dot] com", "carl(at)example(dot)net",
    // "dana @ example.com".
    concat!(
        r"(?i)\b[a-z0-9._%+\-]+",
        r"(?:[ ]*(?:\[at\]|\(at\)|\{at\})[ ]*|[ ]+@[ ]*|[ ]*@[ ]+)",
        r"[a-z0-9\-]+(?:(?:[ ]*(?:\[dot\]|\(dot\)|\{dot\})[ ]*|\.)[a-z0-9\-]+)*",
        r"(?:[ ]*(?:\[dot\]|\(dot\)|\{dot\})[ ]*|\.)[a-z]{2,24}\b",
    ),
    // EmailSpelled: "bob at example dot com". The spelled " dot " and a
    // known top-level domain are required: "look at example.com" is a
    // website, and "at the dot of noon" is not an address.
    concat!(
        r"(?i)\b[a-z0-9._%+\-]+[ ]+at[ ]+[a-z0-9\-]+(?:[ ]+dot[ ]+[a-z0-9\-]+)*",
        r"[ ]+dot[ ]+(?:com|org|net|edu|gov|io|uk|de|fr|es|nl|eu|ch|info|biz)\b",
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
    AddressSouth,
    AddressPoBox,
    SsnLabelled,
    PhoneLabelled,
    EmailObfuscated,
    EmailSpelled,
}

fn compile(pattern: &str) -> Regex {
    // The patterns are constants checked by `every_pattern_compiles`; a typo
    // is a bug caught by the first test run, never input-dependent.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in PII pattern: {e}"))
}

static REGEXES: LazyLock<[Regex; 18]> = LazyLock::new(|| PATTERNS.map(compile));

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

/// What every obfuscated e-mail pattern contains (lower case).
const OBFUSCATION_MARKERS: [&str; 6] = ["[at]", "(at)", "{at}", " @", "@ ", " dot "];

/// Whether `text` may hold an e-mail address written to dodge spam filters.
fn may_hold_obfuscated_email(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    OBFUSCATION_MARKERS.iter().any(|m| lower.contains(m))
}

fn emails(text: &str, out: &mut Vec<Span>) {
    let plain = if text.contains('@') {
        &[Pat::Email][..]
    } else {
        &[]
    };
    let obfuscated = if may_hold_obfuscated_email(text) {
        &[Pat::EmailObfuscated, Pat::EmailSpelled][..]
    } else {
        &[]
    };
    for &pat in plain.iter().chain(obfuscated) {
        for m in re(pat).find_iter(text) {
            // The local part may not start with a dot, and a leading
            // apostrophe is a quote; trim them off rather than drop the
            // address.
            let start =
                m.start() + m.as_str().len() - m.as_str().trim_start_matches(['.', '\'']).len();
            out.push(Span {
                start,
                end: m.end(),
                kind: PiiKind::Email,
            });
        }
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
        // Groups of four are the printed form; a separator between two
        // digits anywhere is how people regroup a long number by hand.
        let between_digits = i > start
            && bytes[i - 1].is_ascii_digit()
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if b.is_ascii_alphanumeric() {
            compact.push(char::from(b.to_ascii_uppercase()));
            group += 1;
        } else if (b == b' ' || b == b'-') && (group == 4 || between_digits) {
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
    for caps in re(Pat::SsnLabelled).captures_iter(text) {
        let Some(m) = caps.get(1) else { continue };
        // The pattern fixes nine ASCII digits.
        let d = m.as_str();
        if validate::ssn_valid(&d[0..3], &d[3..5], &d[5..9])
            && stands_alone(text, m.start(), m.end(), &NUMBER)
        {
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Ssn,
            });
        }
    }
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

/// A bare number after a phone word: 8–15 digits with `+`, 10–12 without.
fn labelled_phone_ok(number: &str) -> bool {
    match number.strip_prefix('+') {
        Some(digits) => (8..=15).contains(&digits.len()),
        None => (10..=12).contains(&number.len()),
    }
}

fn phones(text: &str, out: &mut Vec<Span>) {
    for caps in re(Pat::PhoneLabelled).captures_iter(text) {
        let Some(m) = caps.get(1) else { continue };
        if labelled_phone_ok(m.as_str()) && stands_alone(text, m.start(), m.end(), &PLUS_PREFIXED) {
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Phone,
            });
        }
    }
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

/// Words one of which every German or Dutch address pattern contains.
const DE_HINTS: [&str; 9] = [
    "stra", "str.", "allee", "gasse", "platz", "weg", "laan", "gracht", "plein",
];
/// Words one of which every Spanish, Italian or Portuguese address contains.
const SOUTH_HINTS: [&str; 10] = [
    "calle", "avenida", "plaza", "paseo", "carrer", "rua", "piazza", "viale", "corso", "largo",
];
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
        (Pat::AddressPoBox, true),
        (Pat::AddressDe, hinted(&DE_HINTS)),
        (Pat::AddressFr, hinted(&FR_HINTS)),
        (Pat::AddressSouth, hinted(&SOUTH_HINTS)),
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
    // Every detector needs a digit, an `@` or a `:`, except the obfuscated
    // e-mail ones, which need one of their markers; most text has none.
    if !text
        .bytes()
        .any(|b| b.is_ascii_digit() || b == b'@' || b == b':')
        && !may_hold_obfuscated_email(text)
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
        assert_eq!(REGEXES.len(), Pat::EmailSpelled as usize + 1);
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

    #[test]
    fn cards_grouped_with_dots_or_doubled_spaces_are_found_whole() {
        for card in ["4111.1111.1111.1111", "4111  1111  1111  1111"] {
            let text = format!("card {card} please");
            assert_eq!(kinds(&text), [(PiiKind::Card, card)], "{card}");
        }
    }

    #[test]
    fn bare_numbers_after_an_ssn_or_phone_label_are_found() {
        assert_eq!(kinds("SSN:536221234"), [(PiiKind::Ssn, "536221234")]);
        assert_eq!(
            kinds("soc sec 536.22.1234"),
            [(PiiKind::Ssn, "536.22.1234")]
        );
        assert_eq!(kinds("cell 2025550143"), [(PiiKind::Phone, "2025550143")]);
        assert_eq!(
            kinds("call me at 415 - 555 - 0132"),
            [(PiiKind::Phone, "415 - 555 - 0132")]
        );
        // Without a label nine or ten digits stay: they are as likely orders.
        assert_eq!(kinds("order 536221234 and 2025550143"), []);
    }

    #[test]
    fn obfuscated_email_addresses_are_found_but_websites_and_prose_stay() {
        for email in [
            "bob at example dot com",
            "alice [at] example [dot] org",
            "carl(at)example(dot)net",
            "dana @ example.com",
            "o'brien@example.ie",
            "jürgen.müller@example.de",
        ] {
            let text = format!("mail {email} today");
            assert_eq!(kinds(&text), [(PiiKind::Email, email)], "{email}");
        }
        for clean in [
            "look at example.com for the manual",
            "meet at the dot of noon",
            "price @ 5.99 each",
        ] {
            assert_eq!(kinds(clean), [], "{clean}");
        }
    }

    #[test]
    fn an_iban_regrouped_between_digits_is_found() {
        assert_eq!(
            kinds("odd grouping DE89 37040044 0532013000"),
            [(PiiKind::Iban, "DE89 37040044 0532013000")]
        );
    }

    #[test]
    fn more_address_forms_are_found() {
        for address in [
            "123 Main St. Apt 4B",
            "221B Baker Street, London NW1 6XE",
            "1600 pennsylvania ave nw",
            "Kerkstraat 12",
            "Calle Mayor 10",
            "PO Box 1234",
        ] {
            let text = format!("send it to {address} please");
            assert_eq!(kinds(&text), [(PiiKind::Address, address)], "{address}");
        }
    }
}
