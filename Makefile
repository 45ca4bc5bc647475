# bilayer-mobile: two commands on a fresh machine, `make bundle` and `make test`.
# Every target depends on the virtual environment, which `setup` creates and fills from the
# exact-pinned lock (torch==2.13.0 CPU first, so nothing can pull a CUDA build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out
# The main job's export: every target and precision of the default model.
EXPORT_ARGS := --targets onnx,tflite,coreml,executorch,nnapi --precisions fp32,fp16,int8_dynamic,int8

.PHONY: setup gpu-driver test test-fast bundle drive validate coverage bench info docs clean

setup: $(STAMP) gpu-driver

# LiteRT's GPU accelerator and the compositing shaders need a Vulkan device; on a machine without
# a GPU, Mesa's software driver (lavapipe >= 25, Debian bookworm-backports). Installed when root +
# apt allow it; otherwise the script says what to do (and the GPU tests fail with that advice).
gpu-driver:
	@sh scripts/install-vulkan-driver.sh

$(STAMP): requirements/lock.txt requirements/top.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-warn-script-location --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet --no-warn-script-location -c requirements/lock.txt torch==2.13.0
	$(BIN)/pip install --quiet --no-warn-script-location -c requirements/lock.txt -r requirements/top.txt
	$(BIN)/pip install --quiet --no-warn-script-location --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole suite, slow (paper-configuration) tests included.
test: setup
	$(BIN)/python -m pytest -ra --durations=15

# Everything but the slow tests (a quick check while developing).
test-fast: setup
	$(BIN)/python -m pytest -ra -m "not slow"

# The main job on the built-in default model: export identity, frame and baked frame graphs to
# ONNX and TFLite at fp32, fp16, dynamic-range int8 and calibrated int8 (each graph converted once
# per target), validate every artifact in its runtime, publish the bundle with every artifact that
# passed (failures go to rejected/, and make exits 1 after the demo) and print the parity table;
# then render the reference on the packaged photos in reference/photos (frames, strip, GIF) for a look.
bundle: setup
	@echo "== 1/3 model summary (builds the default model once; cached in ~/.cache/bilayer-mobile)"
	$(BIN)/bilayer-mobile info
	rm -rf $(OUT)/bundle
	@echo "== 2/3 export and validate (about 16 minutes on 2 cores, 46 artifacts, GPU runs on lavapipe included; each step shows the time left)"
	@status=0; $(BIN)/bilayer-mobile export $(EXPORT_ARGS) --out $(OUT)/bundle || status=$$?; \
	if [ $$status -ge 2 ]; then exit $$status; fi; \
	echo "== 3/3 render demo"; \
	$(BIN)/bilayer-mobile render --source reference/photos/source.jpg \
		--driver reference/photos/target.jpg reference/photos/source.jpg \
		--sequence-frames 24 --out $(OUT)/render --force || exit $$?; \
	echo "bundle: $(OUT)/bundle (report: $(OUT)/bundle/reports/parity.md; converter log: $(OUT)/bundle/reports/export.log)"; \
	echo "render demo: $(OUT)/render"; \
	exit $$status

# The avatar of source.jpg driven by a clip generated from target.jpg, through the bundle's driver
# models and graphs, in every runtime that runs here (videos and side-by-sides in $(OUT)/drive).
drive: setup
	$(BIN)/python scripts/make-driving-clip.py reference/photos/target.jpg $(OUT)/drive/clip.mp4
	for runtime in litert onnxruntime executorch; do \
		$(BIN)/bilayer-mobile drive --source reference/photos/source.jpg --driver $(OUT)/drive/clip.mp4 \
			--bundle $(OUT)/bundle --runtime $$runtime --out $(OUT)/drive/$$runtime.mp4 --force || exit $$?; \
	done

# Which ops of each TFLite artifact LiteRT's GPU accelerator takes, and its fp16 parity.
coverage: setup
	$(BIN)/bilayer-mobile coverage $(OUT)/bundle

# Latency of the default bundle (exported first when $(OUT)/bundle does not exist): every frame,
# baked frame and identity artifact in LiteRT (1 and 2 threads), onnxruntime and ExecuTorch beside
# the PyTorch reference, the fp32 GEMM ceiling, the stages of a frame driven by a clip generated
# from target.jpg, and the roofline estimate; report in $(OUT)/bench/latency.md (docs/benchmarks.md).
# Phones: add BENCH_ARGS="--android --benchmark-model PATH [--taskset f0]" (a device over adb).
bench: setup
	test -f $(OUT)/bundle/manifest.json || $(BIN)/bilayer-mobile export $(EXPORT_ARGS) --out $(OUT)/bundle
	$(BIN)/python scripts/make-driving-clip.py reference/photos/target.jpg $(OUT)/bench/clip.mp4
	$(BIN)/bilayer-mobile bench $(OUT)/bundle --driver $(OUT)/bench/clip.mp4 \
		--out $(OUT)/bench $(BENCH_ARGS)

# Re-run the parity gate on an existing bundle.
validate: $(STAMP)
	$(BIN)/bilayer-mobile validate $(OUT)/bundle

info: $(STAMP)
	$(BIN)/bilayer-mobile info

# Regenerate the tables of docs/contract.md from the graphs' own contract (tests check they are current).
docs: $(STAMP)
	$(BIN)/bilayer-mobile contract --update-doc docs/contract.md

clean:
	rm -rf $(OUT) .pytest_cache
