//! Deterministic generators for PII and look-alikes, shared by the corpus
//! test and the property tests. A tiny SplitMix64 keeps them seedable
//! without another dependency.

use outpost_protocol::redact::validate;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    pub fn letters(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'A' + self.below(26) as u8))
            .collect()
    }
}

fn luhn_check_digit(partial: &str) -> char {
    (b'0'..=b'9')
        .map(char::from)
        .find(|d| validate::luhn_valid(&format!("{partial}{d}")))
        .expect("one digit always completes a Luhn number")
}

fn group(digits: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    for &size in sizes {
        out.push(&digits[at..(at + size).min(digits.len())]);
        at += size;
    }
    out.join(sep)
}

/// A valid card number of a random network, formatted as people type them.
pub fn card(rng: &mut Rng) -> String {
    let (prefix, len, sizes): (String, usize, &[usize]) = match rng.below(8) {
        0 | 1 => ("4".into(), 16, &[4, 4, 4, 4]),
        2 => (rng.range(51, 55).to_string(), 16, &[4, 4, 4, 4]),
        3 => (rng.range(2221, 2720).to_string(), 16, &[4, 4, 4, 4]),
        4 => (rng.pick(&["34", "37"]).to_string(), 15, &[4, 6, 5]),
        5 => ("6011".into(), 16, &[4, 4, 4, 4]),
        6 => (rng.range(3528, 3589).to_string(), 16, &[4, 4, 4, 4]),
        _ => ("36".into(), 14, &[4, 6, 4]),
    };
    let body = format!("{prefix}{}", rng.digits(len - 1 - prefix.len()));
    let digits = format!("{body}{}", luhn_check_digit(&body));
    let sep = *rng.pick(&[" ", " ", "-", ""]);
    group(&digits, sizes, sep)
}

/// A valid IBAN of a random country, compact or in groups of four.
pub fn iban(rng: &mut Rng) -> String {
    let (country, bban) = match rng.below(10) {
        0 => ("DE", rng.digits(18)),
        1 => ("GB", format!("{}{}", rng.letters(4), rng.digits(14))),
        2 => (
            "FR",
            format!("{}{}{}", rng.digits(20), rng.letters(1), rng.digits(2)),
        ),
        3 => ("NL", format!("{}{}", rng.letters(4), rng.digits(10))),
        4 => ("ES", rng.digits(20)),
        5 => ("IT", format!("{}{}", rng.letters(1), rng.digits(22))),
        6 => ("CH", rng.digits(17)),
        7 => ("AT", rng.digits(16)),
        8 => ("BE", rng.digits(12)),
        _ => ("PL", rng.digits(24)),
    };
    let rem = validate::iban_mod97(&format!("{country}00{bban}")).expect("alphanumeric");
    let compact = format!("{country}{:02}{bban}", 98 - rem);
    debug_assert!(validate::iban_valid(&compact));
    if rng.chance(60) {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        compact
    }
}

const FIRST: &[&str] = &[
    "anna", "john", "maria", "li", "o.brien", "jean-luc", "sam", "fatima", "max", "zoe",
];
const LAST: &[&str] = &[
    "smith", "mueller", "dupont", "nguyen", "rossi", "kowalski", "garcia", "lee",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "shop.co.uk",
    "post.de",
    "free.fr",
    "corp-mail.net",
];

pub fn email(rng: &mut Rng) -> String {
    let first = *rng.pick(FIRST);
    let last = *rng.pick(LAST);
    let local = match rng.below(5) {
        0 => format!("{first}.{last}"),
        1 => format!("{first}{}", rng.digits(2)),
        2 => format!("{first}_{last}+orders"),
        3 => format!("{}{last}", &first[..1]),
        _ => first.to_owned(),
    };
    let domain = *rng.pick(DOMAINS);
    if rng.chance(15) {
        format!("{}@{}", local.to_uppercase(), domain.to_uppercase())
    } else {
        format!("{local}@{domain}")
    }
}

pub fn phone(rng: &mut Rng) -> String {
    let area = format!("{}{}", rng.range(2, 9), rng.digits(2));
    let exchange = format!("{}{}", rng.range(2, 9), rng.digits(2));
    let line = rng.digits(4);
    match rng.below(18) {
        16 => format!("(+44) 20 {} {}", rng.digits(4), rng.digits(4)),
        17 => format!("+44 (0) 7{} {}", rng.digits(3), rng.digits(6)),
        0 => format!("({area}) {exchange}-{line}"),
        1 => format!("{area}-{exchange}-{line}"),
        2 => format!("{area}.{exchange}.{line}"),
        3 => format!("+1 {area} {exchange} {line}"),
        4 => format!("+1 ({area}) {exchange}-{line}"),
        5 => format!("1-800-{exchange}-{line}"),
        6 => format!("+44 20 {} {}", rng.digits(4), rng.digits(4)),
        7 => format!("020 {} {}", rng.digits(4), rng.digits(4)),
        8 => format!("07{} {}", rng.digits(3), rng.digits(6)),
        9 => format!("+44 7{} {}", rng.digits(3), rng.digits(6)),
        10 => format!("+49 30 {}", rng.digits(8)),
        11 => format!("030 {}", rng.digits(8)),
        12 => format!("015{} {}", rng.range(1, 9), rng.digits(8)),
        13 => format!("+49 (0)30 {} {}", rng.digits(4), rng.digits(4)),
        14 => {
            let pairs: Vec<String> = (0..4).map(|_| rng.digits(2)).collect();
            format!("+33 {} {}", rng.range(1, 7), pairs.join(" "))
        }
        _ => {
            let pairs: Vec<String> = (0..4).map(|_| rng.digits(2)).collect();
            let sep = *rng.pick(&[" ", "."]);
            format!("0{}{sep}{}", rng.range(1, 7), pairs.join(sep))
        }
    }
}

pub fn ssn(rng: &mut Rng) -> String {
    let mut area = rng.range(1, 899);
    if area == 666 {
        area = 665;
    }
    let group = rng.range(1, 99);
    let serial = rng.range(1, 9999);
    let sep = if rng.chance(85) { "-" } else { " " };
    format!("{area:03}{sep}{group:02}{sep}{serial:04}")
}

pub fn ip(rng: &mut Rng) -> String {
    if rng.chance(65) {
        let o = |rng: &mut Rng| rng.range(0, 255);
        format!("{}.{}.{}.{}", rng.range(1, 223), o(rng), o(rng), o(rng))
    } else {
        let mut groups = [0u16; 8];
        groups[0] = *rng.pick(&[0x2001, 0xfe80, 0x2a02, 0xfd00]);
        let zero_from = rng.range(1, 5) as usize;
        let zero_len = rng.range(0, 3) as usize;
        for (i, g) in groups.iter_mut().enumerate().skip(1) {
            if !(zero_from..zero_from + zero_len).contains(&i) {
                *g = rng.range(1, 0xffff) as u16;
            }
        }
        std::net::Ipv6Addr::from(groups).to_string()
    }
}

const STREET_NAMES: &[&str] = &[
    "Main",
    "Oak",
    "Maple",
    "Baker",
    "Elm",
    "Sunset",
    "Pennsylvania",
    "Church",
    "Mill",
    "Park",
];
const SUFFIXES: &[&str] = &[
    "Street",
    "St",
    "Avenue",
    "Ave",
    "Road",
    "Rd",
    "Lane",
    "Boulevard",
    "Blvd",
    "Drive",
];
const CITIES: &[(&str, &str)] = &[
    ("Springfield", "IL"),
    ("Portland", "OR"),
    ("Austin", "TX"),
    ("Albany", "NY"),
];
const DE_NAMES: &[&str] = &[
    "Haupt", "Bahnhof", "Schiller", "Goethe", "Linden", "Berliner", "Kirch",
];
const FR_NAMES: &[&str] = &[
    "la Paix",
    "Rivoli",
    "la République",
    "Victor Hugo",
    "Saint-Honoré",
];

pub fn address(rng: &mut Rng) -> String {
    match rng.below(7) {
        6 => format!(
            "{} {} {}",
            rng.range(1, 999),
            rng.pick(&["main", "oak", "church", "mill"]),
            rng.pick(&["street", "road", "avenue"])
        ),
        0..=2 => {
            let number = rng.range(1, 9999);
            let name = *rng.pick(STREET_NAMES);
            let suffix = *rng.pick(SUFFIXES);
            if rng.chance(30) {
                let (city, state) = *rng.pick(CITIES);
                format!(
                    "{number} {name} {suffix}, {city}, {state} {}",
                    rng.digits(5)
                )
            } else {
                format!("{number} {name} {suffix}")
            }
        }
        3 | 4 => {
            let name = *rng.pick(DE_NAMES);
            let number = rng.range(1, 199);
            match rng.below(3) {
                0 => format!("{name}straße {number}"),
                1 => format!("{name}strasse {number}, {} Berlin", rng.digits(5)),
                _ => format!("{name}weg {number}"),
            }
        }
        _ => format!("{} rue {}", rng.range(1, 120), rng.pick(FR_NAMES)),
    }
}

// ---- distractors: must survive redaction ----

pub fn order_number(rng: &mut Rng) -> String {
    match rng.below(6) {
        3 => format!("INV-{}-{}", rng.range(2019, 2025), rng.digits(6)),
        4 => format!("1Z{}{}{}", rng.digits(3), rng.letters(2), rng.digits(10)),
        5 => format!("#{}", rng.digits(5)),
        0 => format!("ORD-{}-{}", rng.range(2019, 2025), rng.digits(6)),
        1 => format!("#A-{}", rng.digits(5)),
        _ => format!("ORD{}", rng.digits(8)),
    }
}

pub fn timestamp(rng: &mut Rng) -> String {
    let (y, mo, d) = (rng.range(2019, 2025), rng.range(1, 12), rng.range(1, 28));
    let (h, mi, s) = (rng.range(0, 23), rng.range(0, 59), rng.range(0, 59));
    match rng.below(8) {
        6 => format!("{h:02}:{mi:02}:{s:02}.{}", rng.digits(3)),
        7 => format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}"),
        0 => format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        1 => format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        2 => format!("{d:02}/{mo:02}/{y} {h:02}:{mi:02}"),
        3 => format!("{d:02}.{mo:02}.{y} {h:02}:{mi:02}"),
        4 => rng.range(1_500_000_000, 1_800_000_000).to_string(),
        _ => rng.range(1_500_000_000_000, 1_800_000_000_000).to_string(),
    }
}

pub fn sku(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("SKU-{}-{}-{}", rng.digits(2), rng.digits(4), rng.letters(1)),
        1 => format!("{}-{}", rng.letters(2), rng.range(100, 9999)),
        2 => format!("SKU{}", rng.digits(7)),
        _ => format!(
            "{}-{}{}{}",
            rng.letters(2),
            rng.letters(2),
            rng.digits(2),
            rng.letters(1)
        ),
    }
}

pub fn version(rng: &mut Rng) -> String {
    let (a, b, c) = (rng.range(0, 12), rng.range(0, 30), rng.range(0, 200));
    match rng.below(3) {
        0 => format!("v{a}.{b}.{c}"),
        1 => format!("{a}.{b}.{c}-beta.{}", rng.range(1, 9)),
        _ => format!("firmware {a}.{b}.{c}.{}", rng.range(0, 99)),
    }
}

pub fn price(rng: &mut Rng) -> String {
    let units = rng.range(1, 2999);
    let cents = rng.range(0, 99);
    match rng.below(4) {
        0 => format!("${},{:03}.{cents:02}", units / 1000 + 1, units % 1000),
        1 => format!("€{units}.{cents:02}"),
        2 => format!("£{units}.{cents:02}"),
        _ => format!("{units},{cents:02} €"),
    }
}
