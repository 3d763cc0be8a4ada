//! A generated corpus of support-style sentences with planted PII and
//! look-alikes: measures recall per kind and false positives on distractors.
//!
//! Run with `-- --nocapture` to see the table. The generators plant the
//! formats the detectors target (see `gen.rs`), so these figures measure the
//! detectors against those formats, not against all text in the wild.

use std::collections::BTreeMap;

use outpost_protocol::{redact, PiiKind};

use crate::gen::{self, Rng};

const SENTENCES: usize = 6_000;
const SEED: u64 = 0x5eed_2024_0501;

const TEMPLATES: &[&str] = &[
    "My card {card} was charged twice for order {order}.",
    "Refund the {price} to card {card} please, it was taken on {ts}.",
    "I paid with {card} at {ts} but the receipt shows {sku}.",
    "Please email the invoice for {order} to {email}.",
    "My address is {email}, I bought {sku} on {ts}.",
    "Call me back at {phone} about order {order}.",
    "You can reach me on {phone} after {ts}, it's about {sku}.",
    "My number is {phone}; the kiosk runs {version}.",
    "Please refund {price} to my IBAN {iban}, order {order}.",
    "Bank account {iban} was debited on {ts} for {sku}.",
    "They asked for my SSN {ssn} when I ordered {sku}.",
    "Is it safe that the form wanted {ssn} for order {order}?",
    "The kiosk at {ip} shows an error since {ts}.",
    "My router {ip} blocks the update to {version}.",
    "Ship the replacement {sku} to {address}.",
    "I live at {address} and order {order} never arrived.",
    "Hi, I'm at {address}, phone {phone}, email {email}; order {order} on {ts}.",
    "Card {card}, IBAN {iban}, SSN {ssn} - why does {sku} cost {price}?",
    "Order {order} placed {ts} shows {sku} at {price}, {version}.",
    "The screen froze at {ts} while scanning {sku}; receipt {order}.",
    "card:{card} exp 12/27, ref {order}",
    "contact <{email}> or tel:{phone} re {sku}",
    "Support ticket {order}: customer at {address} ({phone}) reports {sku} faulty since {ts}.",
    "Pay {price} by transfer to {iban} before {ts}; your invoice is {order}.",
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Distractor {
    Order,
    Timestamp,
    Sku,
    Version,
    Price,
}

enum Slot {
    Pii(PiiKind),
    Distractor(Distractor),
}

fn slot(name: &str) -> Slot {
    match name {
        "card" => Slot::Pii(PiiKind::Card),
        "iban" => Slot::Pii(PiiKind::Iban),
        "email" => Slot::Pii(PiiKind::Email),
        "phone" => Slot::Pii(PiiKind::Phone),
        "ssn" => Slot::Pii(PiiKind::Ssn),
        "ip" => Slot::Pii(PiiKind::Ip),
        "address" => Slot::Pii(PiiKind::Address),
        "order" => Slot::Distractor(Distractor::Order),
        "ts" => Slot::Distractor(Distractor::Timestamp),
        "sku" => Slot::Distractor(Distractor::Sku),
        "version" => Slot::Distractor(Distractor::Version),
        "price" => Slot::Distractor(Distractor::Price),
        other => panic!("unknown slot {other}"),
    }
}

fn generate(rng: &mut Rng, slot: &Slot) -> String {
    match slot {
        Slot::Pii(PiiKind::Card) => gen::card(rng),
        Slot::Pii(PiiKind::Iban) => gen::iban(rng),
        Slot::Pii(PiiKind::Email) => gen::email(rng),
        Slot::Pii(PiiKind::Phone) => gen::phone(rng),
        Slot::Pii(PiiKind::Ssn) => gen::ssn(rng),
        Slot::Pii(PiiKind::Ip) => gen::ip(rng),
        Slot::Pii(_) => gen::address(rng),
        Slot::Distractor(Distractor::Order) => gen::order_number(rng),
        Slot::Distractor(Distractor::Timestamp) => gen::timestamp(rng),
        Slot::Distractor(Distractor::Sku) => gen::sku(rng),
        Slot::Distractor(Distractor::Version) => gen::version(rng),
        Slot::Distractor(Distractor::Price) => gen::price(rng),
    }
}

struct Sentence {
    text: String,
    pii: Vec<(PiiKind, String)>,
    distractors: Vec<(Distractor, String)>,
}

fn sentence(rng: &mut Rng, template: &str) -> Sentence {
    let mut out = Sentence {
        text: String::new(),
        pii: Vec::new(),
        distractors: Vec::new(),
    };
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("closed slot");
        out.text.push_str(&rest[..open]);
        let slot = slot(&rest[open + 1..close]);
        let value = generate(rng, &slot);
        out.text.push_str(&value);
        match slot {
            Slot::Pii(kind) => out.pii.push((kind, value)),
            Slot::Distractor(kind) => out.distractors.push((kind, value)),
        }
        rest = &rest[close + 1..];
    }
    out.text.push_str(rest);
    out
}

#[derive(Default)]
struct Tally {
    planted: u32,
    hit: u32,
    typed: u32,
}

#[test]
fn generated_support_corpus_meets_recall_and_false_positive_targets() {
    let started = std::time::Instant::now();
    let mut rng = Rng::new(SEED);
    let mut recall: BTreeMap<PiiKind, Tally> = BTreeMap::new();
    let mut kept: BTreeMap<Distractor, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    let mut clean_changed = 0u32;
    let mut clean = 0u32;
    for i in 0..SENTENCES {
        let s = sentence(&mut rng, TEMPLATES[i % TEMPLATES.len()]);
        let r = redact(&s.text);
        let out = r.text.as_str();
        for (kind, value) in &s.pii {
            let t = recall.entry(*kind).or_default();
            t.planted += 1;
            if !out.contains(value.as_str()) {
                t.hit += 1;
                let planted_of_kind = s.pii.iter().filter(|(k, _)| k == kind).count() as u32;
                if r.found.get(*kind) >= planted_of_kind {
                    t.typed += 1;
                }
            } else if misses.len() < 20 {
                misses.push(format!("missed {kind}: {value:?} in {out:?}"));
            }
        }
        for (kind, value) in &s.distractors {
            let t = kept.entry(*kind).or_default();
            t.planted += 1;
            if out.contains(value.as_str()) {
                t.hit += 1;
            } else if misses.len() < 20 {
                misses.push(format!("redacted {kind:?}: {value:?} in {out:?}"));
            }
        }
        if s.pii.is_empty() {
            clean += 1;
            if out != s.text {
                clean_changed += 1;
            }
        }
    }

    println!("\nPII recall on {SENTENCES} generated sentences (seed {SEED:#x}):");
    println!("| kind    | planted | removed | recall | right placeholder |");
    println!("|---------|--------:|--------:|-------:|------------------:|");
    for (kind, t) in &recall {
        println!(
            "| {:<7} | {:>7} | {:>7} | {:>6.4} | {:>17.4} |",
            kind.as_str(),
            t.planted,
            t.hit,
            f64::from(t.hit) / f64::from(t.planted),
            f64::from(t.typed) / f64::from(t.planted)
        );
    }
    println!("\nFalse positives on look-alikes:");
    println!("| distractor | planted | redacted | FP rate |");
    println!("|------------|--------:|---------:|--------:|");
    for (kind, t) in &kept {
        println!(
            "| {:<10} | {:>7} | {:>8} | {:>7.4} |",
            format!("{kind:?}").to_lowercase(),
            t.planted,
            t.planted - t.hit,
            f64::from(t.planted - t.hit) / f64::from(t.planted)
        );
    }
    println!("\nPII-free sentences changed: {clean_changed} of {clean}");
    println!("time: {:?}", started.elapsed());
    for m in &misses {
        println!("{m}");
    }

    let rate = |t: &Tally| f64::from(t.hit) / f64::from(t.planted);
    for kind in [PiiKind::Card, PiiKind::Iban, PiiKind::Email, PiiKind::Phone] {
        assert!(
            rate(&recall[&kind]) >= 0.99,
            "{kind} recall {}",
            rate(&recall[&kind])
        );
    }
    for kind in [PiiKind::Ssn, PiiKind::Ip, PiiKind::Address] {
        assert!(
            rate(&recall[&kind]) >= 0.95,
            "{kind} recall {}",
            rate(&recall[&kind])
        );
    }
    for kind in [Distractor::Order, Distractor::Timestamp, Distractor::Sku] {
        assert!(
            1.0 - rate(&kept[&kind]) <= 0.01,
            "{kind:?} FP rate {}",
            1.0 - rate(&kept[&kind])
        );
    }
    assert_eq!(clean_changed, 0, "a sentence without PII was changed");
}
