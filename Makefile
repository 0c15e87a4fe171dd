# Shortlist: see README.md. Every target runs from a fresh clone.
SHELL   := /bin/bash
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROTOS  := $(wildcard proto/shortlist/v1/*.proto)
STAMP   := $(VENV)/.installed

.PHONY: install proto demo up down test test-unit lint train bench bench-quality bench-peers bench-index \
	bench-feedback bench-serving bench-soak bench-ranking bench-dislikes bench-swaps \
	bench-lifecycle bench-next-item bench-http bench-pod-memory bench-scale bench-torch-dist clean

install: $(STAMP) proto

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Generated stubs land in shortlist/v1 (git-ignored); never edit them.
proto: $(STAMP) shortlist/v1/.stamp

shortlist/v1/.stamp: $(PROTOS)
	mkdir -p shortlist/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)
	touch shortlist/v1/__init__.py $@

demo: install
	$(BIN)/shortlist demo

up: install
	$(BIN)/shortlist up

down:
	$(BIN)/shortlist down

# Your own data: make train EVENTS=path/to/events.parquet [ITEMS=path/to/items.csv]; without
# EVENTS, the built-in data written as an event log (shortlist sample-events).
EVENTS  ?=
ITEMS   ?=
train: install
	@if [ -z "$(EVENTS)" ]; then $(BIN)/shortlist sample-events .run/sample; fi
	$(BIN)/shortlist train --events $(or $(EVENTS),.run/sample/events.parquet) \
		$(if $(ITEMS),--items $(ITEMS),$(if $(EVENTS),,--items .run/sample/items.parquet))

# All tests: tests/unit (no services), tests/integration (real Redis, the broker, sockets),
# tests/deploy (manifests, alert rules, the container recipe).
# Two pytest processes side by side (the integration tests mostly wait on sockets and
# subprocesses): tests/integration but the whole-stack files, and beside it tests/unit +
# tests/deploy followed by those files (the longest: `make up` training its own bundle, the
# demo), so that neither process runs alone for long; fails if either fails.
STACK_TESTS := tests/integration/test_local_stack.py tests/integration/test_demo.py
test: install
	$(BIN)/python -m pytest -q --durations=15 tests/integration \
		$(addprefix --ignore=,$(STACK_TESTS)) & integration=$$!; \
	$(BIN)/python -m pytest -q --durations=15 tests/unit tests/deploy $(STACK_TESTS); rest=$$?; \
	wait $$integration; status=$$?; \
	echo "make test: integration exit $$status, unit+deploy+stack exit $$rest"; \
	exit $$(( rest || status ))

# The fast ones only: no Redis or broker needed, no offline pipeline runs.
test-unit: install
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Benchmarks print figures; the datasets in ../shared/data are used when present.
DATA    ?= ../shared/data
REPORTS ?= reports

bench: bench-quality bench-ranking bench-index bench-feedback bench-serving

bench-quality: install
	@if [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist bench recency --data $(DATA)/gowalla && \
		$(BIN)/shortlist bench quality --data $(DATA)/gowalla \
		--protocol A --report $(REPORTS)/quality; else echo "absent: $(DATA)/gowalla"; fi
	@if [ -d $(DATA)/lastfm ]; then $(BIN)/shortlist bench quality --data $(DATA)/lastfm \
		--protocol B --report $(REPORTS)/quality; else echo "absent: $(DATA)/lastfm"; fi
	@# the ablation: each candidate source alone, their fusion and the two-stage pipeline
	@# (JSON `ablation`), per dataset and protocol
	@for run in "lastfm B" "gowalla B" "gowalla A" "ml-100k B"; do set -- $$run; \
		if [ -d $(DATA)/$$1 ]; then $(BIN)/shortlist bench quality --data $(DATA)/$$1 \
		--protocol $$2 --pipeline two-stage || exit 1; else echo "absent: $(DATA)/$$1"; fi; done

# Peers (implicit's ALS and BPR, the [bench] extra): tuned on valid, then the same protocol
# code as ours, on every dataset the quality bench runs.
# The peers are a bench-only extra (pyproject [bench]): installed here, never by make install.
bench-peers: install
	$(BIN)/pip install -q implicit==0.7.3
	@for run in "lastfm B" "ml-100k B" "gowalla B" "gowalla A"; do set -- $$run; \
		if [ -d $(DATA)/$$1 ]; then for m in als implicit-bpr; do \
		$(BIN)/shortlist bench quality --data $(DATA)/$$1 --protocol $$2 --model $$m \
		--report $(REPORTS)/quality || exit 1; done; else echo "absent: $(DATA)/$$1"; fi; done

bench-index: install
	@if [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist bench index --data $(DATA)/gowalla; \
		else echo "absent: $(DATA)/gowalla"; fi

# The local stack (Redis, tansu, the services) on a Gowalla-sized bundle, under
# an open-loop load of $(RATE)/s from the bundle's own users (5% unknown ones); the bundle
# is trained once (delete $(SERVING)/artifacts to retrain) and the stack is stopped whatever
# the outcome. The report gives CPU ms per call of every process and the load average, then
# each stage's latency from the services' histograms (`shortlist bench stages`).
RATE    ?= 500
DURATION ?= 30
CONNECTIONS ?= 64
# Share of the arrivals that are SendFeedback (a like of a returned item): those users'
# vectors are folded in, so their next Recommend searches the index instead of the
# bundle's precomputed shortlist.
FEEDBACK_SHARE ?= 0
# Co-located by default: gateway processes that run retrieval and ranking themselves (the
# measured best on 2 cores); COLOCATE=0 GATEWAY_WORKERS=1 runs the four-service topology.
COLOCATE ?= 1
GATEWAY_WORKERS ?= 2
# BALANCE=workers: each gateway worker also listens on its own port (WORKER_PORT + w) and
# the load test spreads its connections evenly over those ports, as a gRPC client's round
# robin over the workers would; BALANCE=port: all connections to the shared port, where the
# kernel's hash of each connection picks the worker (uneven: 40/60 splits were seen).
BALANCE ?= workers
WORKER_PORT ?= 50061
SERVING := $(REPORTS)/serving
ifeq ($(BALANCE),workers)
SERVING_PORT := $(WORKER_PORT)
SERVING_TARGET = $(shell $(BIN)/python -c "print(','.join('127.0.0.1:%d' % ($(WORKER_PORT) + w) for w in range($(GATEWAY_WORKERS))))")
else
SERVING_PORT := 0
SERVING_TARGET = $${SHORTLIST_GATEWAY_ADDR:-127.0.0.1:50051}
endif
bench-serving: install
	mkdir -p $(SERVING)
	if [ -e $(SERVING)/artifacts/LATEST ]; then echo "reusing $(SERVING)/artifacts"; \
	elif [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist train --out $(SERVING)/artifacts \
		--data $(DATA)/gowalla --model spectral; else $(BIN)/shortlist train \
		--out $(SERVING)/artifacts --n-users 29858 --n-items 40981; fi
	$(BIN)/python -c "import json, pathlib, sys; r = pathlib.Path(sys.argv[1]); \
		v = (r / 'LATEST').read_text().strip(); \
		print(chr(10).join(json.loads((r / v / 'users.json').read_text())))" \
		$(SERVING)/artifacts > $(SERVING)/users.txt
	SHORTLIST_BUNDLE=$(SERVING)/artifacts SHORTLIST_COLOCATE=$(COLOCATE) \
		SHORTLIST_GATEWAY_WORKERS=$(GATEWAY_WORKERS) \
		SHORTLIST_GATEWAY_WORKER_PORT=$(SERVING_PORT) $(BIN)/shortlist up
	$(BIN)/shortlist loadtest --target $(SERVING_TARGET) \
		--rate $(RATE) --duration $(DURATION) --connections $(CONNECTIONS) \
		--feedback-share $(FEEDBACK_SHARE) \
		--users $(SERVING)/users.txt --plot $(SERVING)/latency.png \
		| tee $(SERVING)/loadtest.txt; rc=$${PIPESTATUS[0]}; \
		SHORTLIST_COLOCATE=$(COLOCATE) SHORTLIST_GATEWAY_WORKERS=$(GATEWAY_WORKERS) \
		$(BIN)/shortlist bench stages --bundle $(SERVING)/artifacts | tee $(SERVING)/stages.txt; \
		$(BIN)/shortlist down; exit $$rc

# The local stack on its own free ports under a steady mixed load (Recommend + 20%
# SendFeedback) for $(SOAK_SECONDS)s: errors, p50/p99 per minute, RSS of every process and
# its slope; fails when a bound breaks (any error, RSS growth >= 10% after the warm-up).
# SOAK_MINUTES=30 SOAK_FAULTS=all: the long run with the faults of issue 27 on a schedule
# (SOAK_FAULT_EVERY seconds apart), each counted (docs/benchmarks.md, "Soak with faults").
SOAK_SECONDS ?= 600
SOAK_MINUTES ?=
SOAK_RATE    ?= 100
SOAK_FAULTS  ?=
SOAK_FAULT_EVERY ?= 60
# The two-stage pipeline (retrieval shortlist + LambdaRank) against retrieval order on the same
# users, then the ranking service alone over gRPC on a bundle of the built-in data.
bench-ranking: install
	@if [ -d $(DATA)/ml-100k ]; then $(BIN)/shortlist bench quality --data $(DATA)/ml-100k \
		--protocol A --pipeline two-stage --ranker-seeds 6; else echo "absent: $(DATA)/ml-100k"; fi
	@# served: the labels `shortlist train` holds out (the default); valid: the valid split
	@if [ -d $(DATA)/gowalla ]; then for labels in served valid; do \
		$(BIN)/shortlist bench quality --data $(DATA)/gowalla --protocol A \
		--pipeline two-stage --ranker-labels $$labels || exit 1; done; \
		else echo "absent: $(DATA)/gowalla"; fi
	@# LastFM's likes carry no order: the ranker's lift with random labels, not line order
	@if [ -d $(DATA)/lastfm ]; then $(BIN)/shortlist bench quality --data $(DATA)/lastfm \
		--protocol B --pipeline two-stage --ranker-labels random; \
		else echo "absent: $(DATA)/lastfm"; fi
	$(BIN)/shortlist train --out $(REPORTS)/ranking/artifacts
	$(BIN)/shortlist bench ranking --bundle $(REPORTS)/ranking/artifacts

# LightGCN on MovieLens-100K with and without the negative graph of dislikes (3 seeds).
bench-dislikes: install
	@if [ -d $(DATA)/ml-100k ]; then $(BIN)/shortlist bench dislikes --data $(DATA)/ml-100k; \
		else echo "absent: $(DATA)/ml-100k"; fi

bench-soak: install
	mkdir -p $(REPORTS)/soak
	$(BIN)/shortlist bench soak \
		--seconds $(if $(SOAK_MINUTES),$$(( $(SOAK_MINUTES) * 60 )),$(SOAK_SECONDS)) \
		--rate $(SOAK_RATE) --feedback-share 0.2 --faults "$(SOAK_FAULTS)" \
		--fault-every $(SOAK_FAULT_EVERY) --report $(REPORTS)/soak/soak.json

# The HTTP/JSON front door against gRPC on one co-located local stack, in alternating
# rounds of the same open-loop load (reports/http/bench.txt keeps the output).
HTTP_RATE ?= 100
HTTP_ROUNDS ?= 3
bench-http: install
	mkdir -p $(REPORTS)/http
	$(BIN)/shortlist bench http --rate $(HTTP_RATE) --rounds $(HTTP_ROUNDS) \
		--bundle $(REPORTS)/http/artifacts | tee $(REPORTS)/http/bench.txt

# Resident memory of the co-located stages over 20 hot swaps of the serving bundle
# (train it first with make bench-serving).
SWAPS ?= 20
bench-swaps: install
	$(BIN)/shortlist bench swaps --bundle $(SERVING)/artifacts --swaps $(SWAPS)

# Memory of retrieval and ranking pods over generated bundles of 30k, 300k and 3M users (same
# 20k-item catalogue), two pods each; OLD_CODE=<checkout> also runs older code on the same
# bundles (docs/benchmarks.md, "Pod memory"). Bundles are kept in $(REPORTS)/pod-memory.
POD_SIZES ?= 30000,300000,3000000
OLD_CODE  ?=
bench-pod-memory: install
	$(BIN)/shortlist bench pod-memory --sizes $(POD_SIZES) --old-code "$(OLD_CODE)" \
		--work $(REPORTS)/pod-memory

# MovieLens-100K as event logs through the whole loop (docs/benchmarks.md, "lifecycle").
bench-lifecycle: install
	$(BIN)/shortlist bench lifecycle --data $(DATA)/ml-100k

# Live feedback and the next likes: test users' latest likes replayed through the feedback
# worker, their following likes scored against the same bundle without the replay
# (MovieLens-100K two-stage by time; Gowalla retrieval by line order, 2,000 test users).
bench-next-item: install
	@if [ -d $(DATA)/ml-100k ]; then $(BIN)/shortlist bench next-item --data $(DATA)/ml-100k; \
		else echo "absent: $(DATA)/ml-100k"; fi
	@if [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist bench next-item --data $(DATA)/gowalla \
		--pipeline retrieval --max-users 2000; else echo "absent: $(DATA)/gowalla"; fi

bench-feedback: install
	$(BIN)/shortlist bench feedback --foldin-data $(DATA)/lastfm --foldin-data $(DATA)/gowalla

clean:
	rm -rf shortlist/v1 artifacts .run .pytest_cache

# Training at 1x, 10x and 30x Gowalla's interactions (generated data of its shape), in process
# and on a 2-worker Dask LocalCluster: wall time, peak RSS (per worker on Dask), served
# NDCG@20; each run in a subprocess under SCALE_TIME_CAP seconds and SCALE_MEM_CAP GiB of
# RSS (past either: null). The last stdout line is the JSON report.
SCALES         ?= 1,10,30
SCALE_TIME_CAP ?= 3600
SCALE_MEM_CAP  ?= 20
bench-torch-dist: install
	@if [ -d $(DATA)/ml-100k ]; then $(BIN)/shortlist bench torch-dist --data $(DATA)/ml-100k \
		--models lightgcn,two-tower; else echo "absent: $(DATA)/ml-100k"; fi

bench-scale: install
	$(BIN)/shortlist bench scale --scales $(SCALES) --shape $(DATA)/gowalla \
		--time-cap $(SCALE_TIME_CAP) --mem-cap-gib $(SCALE_MEM_CAP)
