# One entry point for local work and CI.
#   make demo   fresh machine: install what is missing, fetch the default models,
#               start the device API and ask it questions
#   make test   formatting, lints, docs and every test (what CI runs)
#   make redteam  indirect prompt injection against the answer pipeline, with the report

CARGO ?= cargo

.PHONY: demo test test-peft bench-lift deps build models fmt-check clippy doc unit bench bench-peer redteam bench-peer-cache bench-peer-grammar bench-retrieval-real bench-router eval-judge bench-quality eval-quality bench-quantize bench-tune

demo: deps
	$(CARGO) build --release --bin outpost
	./target/release/outpost models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
	bash scripts/demo.sh ./target/release/outpost

test: deps fmt-check
	$(CARGO) build --workspace --all-targets
	# The binary the workspace build just made: `cargo run --bin` alone can
	# unify build-script features differently and rebuild llama.cpp.
	./target/debug/outpost models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet
	# The PEFT check needs a 5.6 GB torch venv (about 7 minutes to make):
	# `make test-peft` runs it; here it says it was skipped.
	OUTPOST_SKIP_PYTHON=1 $(CARGO) test --workspace --no-fail-fast

# A PEFT adapter trained in Python imports and changes llama.cpp's output as
# in PyTorch (tune/reference/venv.sh makes the venv on first run).
test-peft: deps
	$(CARGO) test -p outpost-tune --test peft_import -- --nocapture

deps:
	@bash scripts/install-deps.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Criterion micro-benchmarks of the pure-Rust hot paths.
bench:
	$(CARGO) bench --bench engine

# LoRA training throughput against PyTorch + PEFT (benches/peer/results-tune.md).
bench-tune: deps
	bash benches/peer/tune.sh

# Fact recall and escalation on the sample set's held-out half, base against
# base + an adapter trained on the train half (benches/results-lift.md).
bench-lift: deps
	$(CARGO) build --bin outpost
	bash benches/lift.sh

# outpost quant quantize against llama-quantize (time, identical bytes) and the
# per-type quality table (benches/peer/results-quantize.md).
bench-quantize: deps
	bash benches/peer/quantize.sh

# Side by side with llama.cpp's llama-bench and llama-server (see benches/peer/README.md).
bench-peer: deps
	bash benches/peer/run.sh

# The prompt-injection set (configs/redteam) against the real answer
# pipeline and default model; prints each attack and the success rate.
# Minutes long, so `cargo test` skips it (#[ignore]); this runs it.
redteam: deps
	$(CARGO) build --bin outpost
	./target/debug/outpost models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
	$(CARGO) test --test redteam -- --ignored --nocapture
# The servers only, with matched prompt caches: both on at equal size, then
# both off (benches/peer/README.md).
bench-peer-cache: deps
	bash benches/peer/run.sh --cache-matched
# The servers only, unconstrained and with one JSON schema in every request
# (structured output through llama.cpp's grammar sampler on both sides).
bench-peer-grammar: deps
	bash benches/peer/run.sh --grammar

# Retrieval over a real 100k-chunk corpus of Debian documentation: cold first
# query and warm p50/p95 (benches/kb/README.md). Ingestion takes hours on 2 cores.
bench-retrieval-real:
	bash benches/kb/real/run.sh

# The model router's decision overhead and its fallback time with the
# upstream down (no model needed).
bench-router:
	$(CARGO) bench --bench router

# Answer quality on both evaluation sets (brewstation, systemd), every
# retrieval mode, the reranker on and off, the faithfulness check on and
# off, quoting, and the larger catalog generator, on the held-out half:
# one table in benches/quality/results.md. About an hour on 2 cores.
bench-quality: deps
	bash benches/quality/run.sh

# The full generation run of both sets' held-out halves with the default
# settings and model, gated on what README reports (minutes, so not in
# `make test`, whose --retrieval-only gates run in tests/knowledge.rs).
eval-quality: deps
	$(CARGO) build --release --bin outpost
	./target/release/outpost models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
	for s in brewstation systemd; do \
	  ./target/release/outpost kb ingest configs/kb/$$s --kb eval-out/$$s.kb && \
	  ./target/release/outpost eval run --kb eval-out/$$s.kb --prompts configs/prompts/$$s \
	    --set configs/eval/$$s.jsonl --half test --label $$s-test --out eval-out/$$s-test \
	    --thresholds configs/eval/$$s.thresholds.toml || exit $$?; \
	done

# The whole sample set answered, then judged by the default generator with
# the judge's self-check (reference vs a wrong answer per item): about
# 16 s a question on 2 cores, so half an hour. Report in eval-out/judge/.
eval-judge: deps
	$(CARGO) build --release --bin outpost
	./target/release/outpost models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
	./target/release/outpost kb ingest configs/kb/brewstation --kb eval-out/brewstation.kb
	./target/release/outpost eval run --kb eval-out/brewstation.kb --prompts configs/prompts/brewstation \
	  --set configs/eval/brewstation.jsonl --judge --judge-check --label judge --out eval-out/judge

# Debian packages from the release binary: outpost (the binary), outpost-device
# and outpost-hub (hardened systemd units, /etc/outpost conffiles), into
# target/deb. BINARY and DEB_ARCH override what is packaged (docs/packaging.md).
.PHONY: deb deb-test
BINARY ?= target/release/outpost
DEB_ARCH ?= $(shell dpkg --print-architecture)
deb:
	@test -f $(BINARY) || $(CARGO) build --release --bin outpost
	bash packaging/build-deb.sh $(BINARY) --arch $(DEB_ARCH) --out target/deb

# Install, upgrade, remove and purge the packages in a throwaway bookworm root
# (debootstrap + chroot; needs root), systemd-analyze verify of both units, and
# the binary under the units' sandbox (needs the default model fetched).
deb-test:
	@test -f $(BINARY) || $(CARGO) build --release --bin outpost
	bash packaging/test-install.sh $(BINARY)
	bash packaging/sandbox-check.sh $(BINARY)

# The aarch64 Linux build (Raspberry Pi 4/5 class boards and up), crossed
# from this x86-64 Debian 12 box with Debian's toolchain and Rust, and its
# check under qemu-user as a Cortex-A53: ELF/loader/baseline checks, then the
# default model answers the France question (docs/cross.md). Not in
# `make test`: a clean cross build of llama.cpp and the crate graph is long.
.PHONY: cross-deps cross-build cross-test
cross-deps: deps
	@bash cross/install-deps.sh

cross-build: cross-deps
	bash cross/build.sh

cross-test: cross-deps
	bin="$$(bash cross/build.sh)" && bash cross/test.sh "$$bin"
