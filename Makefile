# Shortlist: see README.md. Every target runs from a fresh clone.
SHELL   := /bin/bash
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROTOS  := $(wildcard proto/shortlist/v1/*.proto)
STAMP   := $(VENV)/.installed

.PHONY: install proto demo up down test test-unit lint train bench bench-quality bench-index \
	bench-feedback bench-serving clean

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

train: install
	$(BIN)/shortlist train

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Benchmarks print figures; the datasets in ../shared/data are used when present.
DATA    ?= ../shared/data
REPORTS ?= reports

bench: bench-quality bench-index bench-feedback bench-serving

bench-quality: install
	@if [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist bench quality --data $(DATA)/gowalla \
		--protocol A --report $(REPORTS)/quality; else echo "absent: $(DATA)/gowalla"; fi
	@if [ -d $(DATA)/lastfm ]; then $(BIN)/shortlist bench quality --data $(DATA)/lastfm \
		--protocol B --report $(REPORTS)/quality; else echo "absent: $(DATA)/lastfm"; fi

bench-index: install
	@if [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist bench index --data $(DATA)/gowalla; \
		else echo "absent: $(DATA)/gowalla"; fi

# The local stack (Redis, tansu, four service processes) on a Gowalla-sized bundle, under
# an open-loop load of $(RATE)/s from the bundle's own users (5% unknown ones); the bundle
# is trained once (delete $(SERVING)/artifacts to retrain) and the stack is stopped whatever
# the outcome. The report gives CPU ms per call of every process and the load average.
RATE    ?= 500
DURATION ?= 30
SERVING := $(REPORTS)/serving
bench-serving: install
	mkdir -p $(SERVING)
	if [ -e $(SERVING)/artifacts/LATEST ]; then echo "reusing $(SERVING)/artifacts"; \
	elif [ -d $(DATA)/gowalla ]; then $(BIN)/shortlist train --out $(SERVING)/artifacts \
		--data $(DATA)/gowalla --model spectral; else $(BIN)/shortlist train \
		--out $(SERVING)/artifacts --users 29858 --items 40981; fi
	$(BIN)/python -c "import json, pathlib, sys; r = pathlib.Path(sys.argv[1]); \
		v = (r / 'LATEST').read_text().strip(); \
		print(chr(10).join(json.loads((r / v / 'users.json').read_text())))" \
		$(SERVING)/artifacts > $(SERVING)/users.txt
	SHORTLIST_BUNDLE=$(SERVING)/artifacts $(BIN)/shortlist up
	$(BIN)/shortlist loadtest --target $${SHORTLIST_GATEWAY_ADDR:-127.0.0.1:50051} \
		--rate $(RATE) --duration $(DURATION) \
		--users $(SERVING)/users.txt --plot $(SERVING)/latency.png \
		| tee $(SERVING)/loadtest.txt; rc=$${PIPESTATUS[0]}; $(BIN)/shortlist down; exit $$rc

bench-feedback: install
	$(BIN)/shortlist bench feedback --foldin-data $(DATA)/lastfm --foldin-data $(DATA)/gowalla

clean:
	rm -rf shortlist/v1 artifacts .run .pytest_cache
