//! The catalog's `[model.fit]` shapes against the real GGUF headers: a
//! wrong layer or head count would size every memory recommendation wrong.
//! Checked for each generator whose file is in the model cache (the test
//! suite fetches the default generator first; others are checked where a
//! developer has fetched them, and named as skipped otherwise).

use outpost_models::fit::ModelShape;
use outpost_models::{gguf, Catalog, ModelStore, Role};

#[test]
fn catalog_shapes_match_the_gguf_headers() {
    let catalog = Catalog::builtin();
    let store = ModelStore::new(ModelStore::default_root());
    let default = catalog.default_generator().name().as_str().to_string();
    let mut checked = Vec::new();
    for entry in catalog
        .entries()
        .iter()
        .filter(|e| e.role() == Role::Generator)
    {
        let fit = entry
            .fit()
            .unwrap_or_else(|| panic!("{}: built-in generators carry [model.fit]", entry.name()));
        let path = store.path_of(entry);
        let Ok(summary) = gguf::inspect(&path) else {
            assert_ne!(
                entry.name().as_str(),
                default,
                "the default generator must be fetched before the tests (`outpost models fetch`)"
            );
            eprintln!("skipped {}: not in {}", entry.name(), path.display());
            continue;
        };
        let shape = ModelShape::from_gguf(&summary).expect("a generator header has its shape");
        assert_eq!(
            fit.shape,
            shape,
            "{}: [model.fit] disagrees with {}",
            entry.name(),
            path.display()
        );
        assert_eq!(
            u64::from(entry.context_length()),
            summary.context_length().unwrap(),
            "{}",
            entry.name()
        );
        checked.push(entry.name().as_str().to_string());
    }
    assert!(checked.contains(&default), "checked {checked:?}");
}
