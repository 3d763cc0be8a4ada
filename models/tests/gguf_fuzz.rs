//! The `cargo fuzz` target `models/fuzz` (`gguf_header`) as property tests
//! on stable: arbitrary bytes, and valid GGUF headers whose counts, lengths
//! and value types are rewritten, go through [`outpost_models::gguf::parse`].
//! Each must give a summary or a typed [`GgufError`], never a panic, a hang
//! or an allocation out of proportion to the input (a thread-local
//! allocation counter checks the largest single allocation). The case count
//! is fixed and small; `PROPTEST_CASES` overrides it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;
use std::path::Path;

use outpost_models::gguf::{parse, GgufError, GgufSummary};
use proptest::prelude::*;

/// Records the largest allocation requested on the current thread, so a
/// header that claims gigabytes is caught even if the allocator would grant
/// them.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: thread-local storage may be gone while a thread exits.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Fixed overhead a parse may allocate whatever the input: the tensor list's
/// initial capacity (4096 entries) and the metadata map's growth.
const FIXED_ALLOCATION_ALLOWANCE: usize = 512 * 1024;

fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

/// The fuzz target's call, plus its oracle: a summary consistent with the
/// input, or a typed error that is not an I/O error (a cursor cannot fail),
/// with no allocation beyond the input's size plus a fixed allowance.
fn check(bytes: &[u8]) -> Result<Option<GgufSummary>, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let result = parse(
        Cursor::new(bytes),
        bytes.len() as u64,
        Path::new("fuzz.gguf"),
    );
    let largest = LARGEST.with(Cell::get);
    prop_assert!(
        largest <= 2 * bytes.len() + FIXED_ALLOCATION_ALLOWANCE,
        "a {}-byte input made a {largest}-byte allocation",
        bytes.len()
    );
    match result {
        Ok(summary) => {
            // Each tensor descriptor takes at least 32 bytes of header.
            prop_assert!(summary.tensor_count.saturating_mul(32) <= bytes.len() as u64);
            prop_assert_eq!(summary.file_size, bytes.len() as u64);
            Ok(Some(summary))
        }
        Err(err) => {
            prop_assert!(!matches!(err, GgufError::Io { .. }), "{err}");
            prop_assert!(err.to_string().starts_with("fuzz.gguf: "), "{err}");
            Ok(None)
        }
    }
}

/// What a header field is, so mutations can aim at the ones parsers trust.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// The tensor or metadata count.
    Count,
    /// A string or array length.
    Length,
    /// A metadata value type or array item type.
    ValueType,
    /// A tensor's rank, dimension, ggml type or offset.
    Tensor,
}

/// A valid GGUF image and where its fields are.
struct Image {
    bytes: Vec<u8>,
    fields: Vec<(Role, usize, usize)>,
}

impl Image {
    fn u32(&mut self, role: Option<Role>, v: u32) {
        if let Some(role) = role {
            self.fields.push((role, self.bytes.len(), 4));
        }
        self.bytes.extend(v.to_le_bytes());
    }

    fn u64(&mut self, role: Option<Role>, v: u64) {
        if let Some(role) = role {
            self.fields.push((role, self.bytes.len(), 8));
        }
        self.bytes.extend(v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u64(Some(Role::Length), s.len() as u64);
        self.bytes.extend(s.as_bytes());
    }

    fn kv_string(&mut self, key: &str, value: &str) {
        self.string(key);
        self.u32(Some(Role::ValueType), 8);
        self.string(value);
    }

    /// A small valid image: string, integer, float, bool and (nested)
    /// array metadata, and `tensors` f32 tensors of 16 elements.
    fn valid(tensors: u64) -> Image {
        let mut image = Image {
            bytes: b"GGUF".to_vec(),
            fields: Vec::new(),
        };
        image.u32(None, 3);
        image.u64(Some(Role::Count), tensors);
        image.u64(Some(Role::Count), 7);
        image.kv_string("general.architecture", "llama");
        image.kv_string("general.type", "model");
        image.string("llama.context_length");
        image.u32(Some(Role::ValueType), 4);
        image.u32(None, 2048);
        image.string("llama.rope.freq_base");
        image.u32(Some(Role::ValueType), 6);
        image.bytes.extend(10000f32.to_le_bytes());
        image.string("general.flag");
        image.u32(Some(Role::ValueType), 7);
        image.bytes.push(1);
        // An array of three f32 (skipped by width) ...
        image.string("tokenizer.ggml.scores");
        image.u32(Some(Role::ValueType), 9);
        image.u32(Some(Role::ValueType), 6);
        image.u64(Some(Role::Length), 3);
        image.bytes.extend([0u8; 12]);
        // ... and an array of arrays of strings (walked item by item).
        image.string("tokenizer.ggml.merges");
        image.u32(Some(Role::ValueType), 9);
        image.u32(Some(Role::ValueType), 9);
        image.u64(Some(Role::Length), 2);
        for _ in 0..2 {
            image.u32(Some(Role::ValueType), 8);
            image.u64(Some(Role::Length), 2);
            image.string("a b");
            image.string("c");
        }
        let stride = 64;
        for i in 0..tensors {
            image.string(&format!("blk.{i}.weight"));
            image.u32(Some(Role::Tensor), 1);
            image.u64(Some(Role::Tensor), 16);
            image.u32(Some(Role::Tensor), 0);
            image.u64(Some(Role::Tensor), i * stride);
        }
        while image.bytes.len() % 32 != 0 {
            image.bytes.push(0);
        }
        image.bytes.extend(vec![0u8; (stride * tensors) as usize]);
        image
    }
}

/// Values that sit on the edges parsers get wrong.
fn edge_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(3),
        Just(9),
        Just(13),
        Just(255),
        Just(4096),
        Just(1 << 16),
        Just((1 << 16) + 1),
        Just(1 << 20),
        Just((1 << 20) + 1),
        Just(u64::from(u32::MAX)),
        Just(1 << 32),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        any::<u64>(),
        0u64..64,
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Rewrite the n-th field of a role.
    Field(u8, prop::sample::Index, u64),
    /// Add or subtract a little from a field (off-by-one lengths).
    Nudge(prop::sample::Index, i8),
    Byte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0u8..4, any::<prop::sample::Index>(), edge_value()).prop_map(|(r, i, v)| Mutation::Field(r, i, v)),
        2 => (any::<prop::sample::Index>(), -3i8..=3).prop_map(|(i, d)| Mutation::Nudge(i, d)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn write_field(bytes: &mut [u8], at: usize, width: usize, value: u64) {
    let le = value.to_le_bytes();
    bytes[at..at + width].copy_from_slice(&le[..width]);
}

fn read_field(bytes: &[u8], at: usize, width: usize) -> u64 {
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(&bytes[at..at + width]);
    u64::from_le_bytes(le)
}

fn mutate(image: &Image, mutations: &[Mutation]) -> Vec<u8> {
    const ROLES: [Role; 4] = [Role::Count, Role::Length, Role::ValueType, Role::Tensor];
    let mut bytes = image.bytes.clone();
    let mut cut = None;
    for m in mutations {
        match m {
            Mutation::Field(role, index, value) => {
                let mut fields: Vec<_> = image
                    .fields
                    .iter()
                    .filter(|(r, ..)| *r == ROLES[usize::from(*role)])
                    .collect();
                // An image without tensors has no tensor fields.
                if fields.is_empty() {
                    fields = image.fields.iter().collect();
                }
                let &(_, at, width) = fields[index.index(fields.len())];
                write_field(&mut bytes, at, width, *value);
            }
            Mutation::Nudge(index, delta) => {
                let (_, at, width) = image.fields[index.index(image.fields.len())];
                let value = read_field(&bytes, at, width).wrapping_add_signed(i64::from(*delta));
                write_field(&mut bytes, at, width, value);
            }
            Mutation::Byte(index, value) => {
                let i = index.index(bytes.len());
                bytes[i] = *value;
            }
            Mutation::Truncate(index) => cut = Some(index.index(bytes.len())),
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut);
    }
    bytes
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_give_a_summary_or_a_typed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_preamble_give_a_typed_error(
        version in prop_oneof![Just(2u32), Just(3u32), any::<u32>()],
        rest in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(version.to_le_bytes());
        bytes.extend(rest);
        check(&bytes)?;
    }

    #[test]
    fn headers_with_mutated_counts_lengths_and_types_give_a_typed_error(
        tensors in 0u64..4,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let image = Image::valid(tensors);
        check(&mutate(&image, &mutations))?;
    }
}

#[test]
fn the_valid_image_parses() {
    for tensors in 0..4 {
        let image = Image::valid(tensors);
        let summary = check(&image.bytes)
            .expect("within limits")
            .expect("a valid image parses");
        assert_eq!(summary.architecture(), Some("llama"));
        assert_eq!(summary.context_length(), Some(2048));
        assert_eq!(summary.tensor_count, tensors);
    }
}

#[test]
fn every_field_set_to_every_edge_value_gives_a_typed_error_or_a_summary() {
    let image = Image::valid(2);
    let edges = [
        0,
        1,
        2,
        9,
        13,
        1 << 16,
        1 << 20,
        u64::from(u32::MAX),
        u64::MAX,
    ];
    for &(_, at, width) in &image.fields {
        for value in edges {
            let mut bytes = image.bytes.clone();
            write_field(&mut bytes, at, width, value);
            check(&bytes).unwrap_or_else(|e| panic!("field at {at} = {value}: {e}"));
        }
    }
}
