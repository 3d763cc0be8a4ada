//! The training dataset: its JSONL contract and how it is built.
