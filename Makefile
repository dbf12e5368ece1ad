# Flash Loyalty: `make run` serves the API with a demo program, `make test` runs every test,
# `make lint` runs the checks CI runs, `make demo` walks a newcomer through the ledger.
# Debug builds everywhere (they compile much faster), except `make bench`, which measures a
# release server.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

FLASH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/flash
FLASH_REDIS_URL ?= redis://127.0.0.1:6379
FLASH_LISTEN ?= 127.0.0.1:50051
# Tests create (and drop) their own flash_test_* databases through this admin connection.
FLASH_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
FLASH_TEST_REDIS_URL ?= redis://127.0.0.1:6379
export FLASH_DATABASE_URL FLASH_REDIS_URL FLASH_LISTEN FLASH_TEST_DATABASE_URL FLASH_TEST_REDIS_URL

# `make audit PROGRAM=acme`
PROGRAM ?= demo
# Appended to the test binaries' arguments: `make test TEST_ARGS=award`
TEST_ARGS ?=

FLASH := ./target/debug/flash
# The published contract `make lint` checks proto/ against with `buf breaking` (FILE rules):
# the last commit on main that changed proto/ when this was set. Move it only with a
# deliberate, announced break, or when a release publishes a new contract.
PROTO_BASELINE ?= 0d5aff04de0b85f5f9510e87427f8f79f3daaae1
BUF := node_modules/.bin/buf
NODE_TOOLS := node_modules/.package-lock.json

.PHONY: bootstrap build run test lint migrate audit expire chaos demo

# PostgreSQL, Redis, the database and the build tools; silent when all is in place.
bootstrap:
	scripts/bootstrap.sh

build:
	cargo build --bin flash

# Migrates, creates the demo program (idempotent) and the local admin client, prints how to
# call as it, and serves on $(FLASH_LISTEN).
# The contact hash key of this checkout, made on first run (never committed: .gitignore).
CONTACT_KEY_FILE := .flash/contact-hash-key
# The bearer token of `local-admin` (every program, every scope), made on first run and
# again only when it stops authenticating (scripts/local-admin.sh).
ADMIN_TOKEN_FILE := .flash/admin-token
WITH_CONTACT_KEY := FLASH_CONTACT_HASH_KEY="$${FLASH_CONTACT_HASH_KEY:-$$(cat $(CONTACT_KEY_FILE))}"

run: bootstrap build
	@mkdir -p .flash && [ -s $(CONTACT_KEY_FILE) ] || \
	  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(CONTACT_KEY_FILE))
	$(FLASH) migrate
	$(FLASH) demo
	$(WITH_CONTACT_KEY) scripts/local-admin.sh $(FLASH) $(ADMIN_TOKEN_FILE) $(FLASH_LISTEN)
	$(WITH_CONTACT_KEY) $(FLASH) serve

# The walkthrough: its own `flash serve` (database flash_demo, dropped and created again, a
# free port) and its own redis-server walk an award and its replay, a FIFO spend, a cap
# outage, a tier upgrade and a refund, then `flash audit`; exits non-zero if a step misbehaves.
demo: bootstrap
	cargo build --workspace --bins
	./target/debug/flash-demo

# Drops the databases of earlier test runs first; a killed run leaves its flash_test_* behind.
test: bootstrap $(NODE_TOOLS)
	psql -w -X -q "$(FLASH_TEST_DATABASE_URL)" -tAc \
	  "select format('drop database if exists %I with (force);', datname) from pg_database where datname like 'flash\_test\_%'" \
	  | psql -w -X -q "$(FLASH_TEST_DATABASE_URL)" >/dev/null || true
	# tests/chaos.rs and tests/demo.rs run the flash-chaos and flash-demo binaries of
	# testing/chaos and testing/demo, which Cargo builds only for their own packages' tests:
	# build every binary of the workspace first.
	cargo build --workspace --bins
	cargo test --workspace --all-targets -- --test-threads=8 $(TEST_ARGS)

lint: $(NODE_TOOLS)
	cargo fmt --all --check
	$(BUF) lint
	$(BUF) breaking --against '.git#ref=$(PROTO_BASELINE)'
	cargo clippy --workspace --all-targets -- -D warnings

# Installs buf, puppeteer-core (the browser test) and d3-force (the layout benchmark) at the
# versions package-lock.json pins, again whenever it changes.
$(NODE_TOOLS): package-lock.json
	npm ci --silent

migrate: bootstrap build
	$(FLASH) migrate

audit: build
	$(FLASH) audit --program $(PROGRAM)

expire: build
	$(FLASH) expire

# Seeded chaos runs, each with its own PostgreSQL cluster, Redis and servers:
# `make chaos SEEDS=100 SECONDS_PER_RUN=8` runs seeds 1..100 (a failing seed prints the
# command that replays it); `make chaos SEED=42` runs one.
SEEDS ?= 100
SECONDS_PER_RUN ?= 8
SEED ?=
# The model-based test runs this many cases after the seeds (256 in `make test`).
MODEL_CASES ?= 1000
chaos: bootstrap
	cargo build --workspace --bins
	if [ -n "$(SEED)" ]; then ./target/debug/flash-chaos --seed $(SEED) --seconds $(SECONDS_PER_RUN); \
	else ./target/debug/flash-chaos --seeds 1..$(SEEDS) --seconds $(SECONDS_PER_RUN); fi
	if [ -z "$(SEED)" ]; then FLASH_MODEL_CASES=$(MODEL_CASES) cargo test --test it model; fi

# Request fuzzing: generated requests for every RPC through an in-process server, then the
# audit; prints the seed and the status-code counts. `make fuzz FUZZ_REQUESTS=20000`,
# `FLASH_FUZZ_SEED=7 make fuzz` replays another seed.
FUZZ_REQUESTS ?= 1000000
.PHONY: fuzz
fuzz: bootstrap
	FLASH_FUZZ_REQUESTS=$(FUZZ_REQUESTS) cargo test --test it fuzz -- --nocapture

# A benchmark, never a pass/fail test, and not part of `make test`: seeds its own database
# (flash_bench, dropped and created again) through a release `flash serve`, then measures
# award, spend, mixed 80/20 and hot-member workloads beside pgbench running the same SQL
# (src/store/hot_path.rs). Award and spend are measured first at each smaller history size.
# The report goes to target/bench/report.md. A quick run:
# `make bench BENCH_MEMBERS=20000 BENCH_ENTRIES=100000 BENCH_SECONDS=5`.
BENCH_MEMBERS ?= 100000
BENCH_ENTRIES ?= 1000000
BENCH_SECONDS ?= 10
BENCH_CLIENTS ?= 1,4,16,64
BENCH_HISTORY_SIZES ?= 10000
# More flash-bench flags, e.g. `BENCH_ARGS=--analyze` (see `flash-bench --help`).
BENCH_ARGS ?=
# Then the referral-graph layout beside igraph's grid Fruchterman–Reingold and Graphviz's
# sfdp on the same synthetic referral forest (time, peak memory, stress, overlaps; report in
# target/bench/layout-report.md). d3-force takes about 6 minutes at 100,000 nodes on this
# machine: `make bench LAYOUT_BASELINES=igraph,d3,sfdp` adds it; `make bench-layout` runs
# only the layout.
LAYOUT_NODES ?= 100000
LAYOUT_BASELINES ?= igraph,sfdp
.PHONY: bench bench-layout
bench: bootstrap
	cargo build --release -p flash-loyalty -p flash-bench --bins
	./target/release/flash-bench --members $(BENCH_MEMBERS) --entries $(BENCH_ENTRIES) \
	  --seconds $(BENCH_SECONDS) --clients $(BENCH_CLIENTS) \
	  --history-sizes $(BENCH_HISTORY_SIZES) $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-layout

bench-layout: bootstrap $(NODE_TOOLS)
	command -v sfdp >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q graphviz >/dev/null
	cargo build --release -p flash-bench --bin flash-layout-bench
	./target/release/flash-layout-bench --nodes $(LAYOUT_NODES) --baselines $(LAYOUT_BASELINES)
