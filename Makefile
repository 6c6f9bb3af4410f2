# semsearch: the two README commands are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
SAMPLE_INDEX ?= data/index/sample
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test test-fast lint sample-index reranker bench container-test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

sample-index: install
	@if [ -e $(SAMPLE_INDEX)/current ]; then echo "sample index present: $(SAMPLE_INDEX)"; else \
	  $(BIN)/python -m indexer build --input data/sample/wordnet_glosses.jsonl.gz --output $(SAMPLE_INDEX); fi

demo: sample-index
	$(BIN)/python -m app --index $(SAMPLE_INDEX) --host $(HOST) --port $(PORT) \
	  $$(test -f models/reranker/config.json && echo --reranker models/reranker)

test: install
	$(BIN)/python -m pytest

# The fast tier (< 90 s here): unit tests with fake encoders and synthetic indexes; `make test` runs everything.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The default reranker: a cross-encoder fine-tuned here from the packaged MiniLM on STS-B train
# (dev for early stopping and fusion tuning; the test split is only reported when ../shared is there).
# --retrieval-weight 0.8: the retrieval score's weight (the search mode's own score) when reranking search candidates. An STS model is not a
# relevance model; at its STS weight (0.5) it lowers nDCG@10, at 0.7-0.9 it is neutral to slightly
# positive (chosen on held-out SciFact *train* claims; only the number is used; docs/reranker.md).
# Then its int8 export into the ONNX cache, which the service's default reranker backend (auto) uses.
STSB_TEST := ../shared/data/stsb/stsb_test.tsv
reranker: install
	@start=$$(date +%s); \
	$(BIN)/python -m indexer train-reranker --scored data/stsb/stsb_train.tsv --dev data/stsb/stsb_dev.tsv \
	  $$(test -f $(STSB_TEST) && echo --test $(STSB_TEST)) --retrieval-weight 0.8 \
	  --output models/reranker --overwrite && \
	$(BIN)/python -c "from semsearch.models.reranker import Reranker; Reranker('models/reranker', backend='onnx-int8')" && \
	echo "make reranker took $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

# The quick benchmarks (a few minutes each on 2 cores); results in bench/results/, see docs/benchmarks.md.
bench: install
	$(BIN)/python bench/bench_encode.py --rounds 1 --scifact-docs 400
	$(BIN)/python bench/bench_search.py --sizes 100000
	$(BIN)/python bench/bench_rerank.py
	$(BIN)/python bench/bench_seed_headline.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Docker image + compose stack, tested for real in a local engine (tests/container/run.sh, docs/docker.md).
container-test:
	bash tests/container/run.sh
