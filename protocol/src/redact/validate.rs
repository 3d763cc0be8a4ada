//! Pure validators behind the detectors: checksums and numbering rules.
//!
//! Each takes the candidate with separators already removed and answers yes
//! or no; none allocates more than a few bytes or can panic.

/// Luhn (mod 10) check over ASCII digits, as used by payment cards.
/// False for an empty string or any non-digit.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Whether the leading digits (the issuer identification number) and the
/// length fit a card network in use: Visa, Mastercard (51–55 and 2221–2720),
/// American Express, Discover, JCB, Diners Club, UnionPay and Maestro.
pub fn card_prefix_plausible(digits: &str) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let prefix = |n: usize| digits[..n].parse::<u32>().unwrap_or(0);
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    match p1 {
        4 => matches!(len, 13 | 16 | 19),
        5 if (51..=55).contains(&p2) => len == 16,
        5 if p2 == 50 || (56..=59).contains(&p2) => (13..=19).contains(&len),
        2 if (2221..=2720).contains(&p4) => len == 16,
        3 if p2 == 34 || p2 == 37 => len == 15,
        3 if (3528..=3589).contains(&p4) => (16..=19).contains(&len),
        3 if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 => {
            (14..=19).contains(&len)
        }
        6 => (13..=19).contains(&len),
        _ => false,
    }
}

/// Luhn-valid and with a plausible issuer prefix and length.
pub fn card_valid(digits: &str) -> bool {
    card_prefix_plausible(digits) && luhn_valid(digits)
}

/// The IBAN length of a country (ISO 3166 alpha-2, upper case), for the
/// countries in the IBAN registry.
pub fn iban_length(country: &str) -> Option<usize> {
    #[rustfmt::skip]
    const LENGTHS: &[(&str, usize)] = &[
        ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20),
        ("BE", 16), ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28),
        ("CH", 21), ("CR", 22), ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27),
        ("DK", 18), ("DO", 28), ("EE", 20), ("EG", 29), ("ES", 24), ("FI", 18),
        ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23),
        ("GL", 18), ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28), ("IE", 22),
        ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30),
        ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20),
        ("LV", 21), ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19),
        ("MN", 20), ("MR", 27), ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18),
        ("NO", 15), ("OM", 23), ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25),
        ("QA", 29), ("RO", 24), ("RS", 22), ("RU", 33), ("SA", 24), ("SC", 31),
        ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("SO", 23),
        ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29),
        ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
    ];
    LENGTHS
        .iter()
        .find(|(c, _)| *c == country)
        .map(|&(_, len)| len)
}

/// The ISO 13616 check: upper-case letters and digits only, the country's
/// length, and the number (first four characters moved to the end, letters
/// as 10–35) is 1 modulo 97.
pub fn iban_valid(compact: &str) -> bool {
    let bytes = compact.as_bytes();
    if bytes.len() < 4
        || !bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        || !bytes[2].is_ascii_digit()
        || !bytes[3].is_ascii_digit()
        || iban_length(&compact[..2]) != Some(bytes.len())
    {
        return false;
    }
    iban_mod97(compact) == Some(1)
}

/// The rearranged IBAN modulo 97 (`None` for characters outside `[0-9A-Z]`).
/// Exposed so generators can compute check digits: for check digits `00`
/// the valid ones are `98 - iban_mod97(..)`.
pub fn iban_mod97(compact: &str) -> Option<u32> {
    let (head, tail) = compact.split_at_checked(4)?;
    let mut rem: u32 = 0;
    for b in tail.bytes().chain(head.bytes()) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return None,
        };
        rem = if value >= 10 {
            (rem * 100 + value) % 97
        } else {
            (rem * 10 + value) % 97
        };
    }
    Some(rem)
}

/// US Social Security number rules: area (first three digits) not 000, 666
/// or 900–999; group (middle two) not 00; serial (last four) not 0000.
pub fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    let all_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(area, 3) && all_digits(group, 2) && all_digits(serial, 4)) {
        return false;
    }
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Dotted-quad IPv4: four decimal octets 0–255 without leading zeros.
pub fn ipv4_valid(s: &str) -> bool {
    let mut parts = 0;
    for octet in s.split('.') {
        parts += 1;
        let ok = !octet.is_empty()
            && octet.len() <= 3
            && octet.bytes().all(|b| b.is_ascii_digit())
            && (octet == "0" || !octet.starts_with('0'))
            && octet.parse::<u16>().is_ok_and(|v| v <= 255);
        if !ok {
            return false;
        }
    }
    parts == 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_the_well_known_test_card_numbers() {
        for card in [
            "4111111111111111",
            "5500000000000004",
            "340000000000009",
            "6011000000000004",
            "3566002020360505",
            "30569309025904",
        ] {
            assert!(luhn_valid(card), "{card}");
            assert!(card_valid(card), "{card}");
        }
    }

    #[test]
    fn luhn_rejects_a_single_changed_digit_and_non_digits() {
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("4111 1111 1111 1111"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn card_prefix_rules_reject_unissued_prefixes_and_wrong_lengths() {
        // Luhn-valid but no network starts with 1 or 0.
        assert!(luhn_valid("1000000000000008"));
        assert!(!card_valid("1000000000000008"));
        // Amex is 15 digits, never 16.
        assert!(!card_prefix_plausible("3400000000000009"));
        // Mastercard's 2-series.
        assert!(card_prefix_plausible("2221000000000009"));
        assert!(!card_prefix_plausible("2220000000000009"));
    }

    #[test]
    fn mod97_accepts_registry_examples_from_several_countries() {
        for iban in [
            "DE89370400440532013000",
            "GB29NWBK60161331926819",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "CH9300762011623852957",
            "BE68539007547034",
            "NO9386011117947",
        ] {
            assert!(iban_valid(iban), "{iban}");
        }
    }

    #[test]
    fn mod97_rejects_changed_digits_wrong_length_and_unknown_countries() {
        assert!(!iban_valid("DE89370400440532013001"));
        assert!(!iban_valid("DE8937040044053201300"));
        assert!(!iban_valid("XX89370400440532013000"));
        assert!(!iban_valid("de89370400440532013000"));
        assert_eq!(
            iban_mod97("DE00370400440532013000").map(|r| 98 - r),
            Some(89)
        );
    }

    #[test]
    fn ssn_rules_reject_area_000_666_and_9xx() {
        assert!(ssn_valid("123", "45", "6789"));
        assert!(!ssn_valid("000", "45", "6789"));
        assert!(!ssn_valid("666", "45", "6789"));
        assert!(!ssn_valid("912", "45", "6789"));
    }

    #[test]
    fn ssn_rules_reject_group_00_and_serial_0000() {
        assert!(!ssn_valid("123", "00", "6789"));
        assert!(!ssn_valid("123", "45", "0000"));
        assert!(!ssn_valid("12", "345", "6789"));
    }

    #[test]
    fn ipv4_needs_four_octets_up_to_255_without_leading_zeros() {
        assert!(ipv4_valid("192.168.1.10"));
        assert!(ipv4_valid("0.0.0.0"));
        assert!(!ipv4_valid("256.1.1.1"));
        assert!(!ipv4_valid("1.2.3"));
        assert!(!ipv4_valid("01.2.3.4"));
        assert!(!ipv4_valid("1.2.3.4.5"));
    }
}
