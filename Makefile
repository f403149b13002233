# Newcomer entry points: `make demo` (set up and listen to the microphone), `make test` (set up and test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := python3-venv libportaudio2 libsndfile1 pulseaudio pulseaudio-utils espeak-ng sox haproxy tmux chromium prometheus
DEMO_CALM := Hello. I would like to check the status of my order, please. Thank you.
DEMO_ANGRY := No! No! I want my money back, right now!
SHARED ?= ../shared
TRAIN_MANIFESTS = $(foreach c,ravdess ased nemo,--manifest $(SHARED)/data/$(c)/manifest.csv)
RUN := T3_RAN_s11_ch80_ye10
CONTAINER_APT := podman runc netavark aardvark-dns iptables debootstrap python3-venv espeak-ng sox
CONTAINER_CACHE ?= $(HOME)/.cache/anger-stream-container
CONTAINER_BASE := $(CONTAINER_CACHE)/debian-bookworm-base.tar
CONTAINER_BASE_PACKAGES := python3,python3-venv,libsndfile1,libportaudio2,ca-certificates,haproxy,prometheus
DEBIAN_MIRROR ?= http://deb.debian.org/debian
TORCH := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
APT_GET := apt-get -o DPkg::Lock::Timeout=600 -qq

.PHONY: demo demo-file test lint deps model evaluate bench clean container-test container-deps

demo: deps $(BIN)/anger-stream  ## set up the runtime and run the detector on the default microphone
	$(BIN)/anger-stream --threshold 0.6

demo-file: deps $(BIN)/anger-stream  ## no microphone? a calm and an angry synthetic line, in real time
	@dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	espeak-ng -w "$$dir/calm.wav" "$(DEMO_CALM)" && \
	espeak-ng -s 200 -p 99 -a 200 -g 0 -w "$$dir/angry.wav" "$(DEMO_ANGRY)" && \
	sox "$$dir/calm.wav" "$$dir/angry.wav" "$$dir/demo.wav" && \
	$(BIN)/anger-stream --input "$$dir/demo.wav" --realtime --threshold 0.6 --patience 2

test: deps $(VENV)/.test-installed  ## set up everything and run the checks and the test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs

# Only the packages named (no recommends), and no service is started or enabled by the install: a policy-rc.d
# refuses starts while it runs (unless the system has its own), and the daemons Debian enables (HAProxy,
# Prometheus) are disabled again (the tests start their own). A held package-manager lock is waited for.
deps:  ## system packages (Debian): python3-venv, PortAudio, libsndfile, PulseAudio, espeak-ng, sox, HAProxy, Chromium, Prometheus (promtool)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "please install: sudo apt-get install --no-install-recommends $$missing"; exit 1; fi; \
	policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=/usr/sbin/policy-rc.d; \
	  printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy; fi; \
	echo "make deps: installing $$missing (waits up to 10 min if another apt or unattended-upgrades holds the lock)"; \
	$(APT_GET) update && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y --no-install-recommends $$missing; \
	code=$$?; [ -z "$$policy" ] || rm -f $$policy; \
	if [ $$code != 0 ]; then echo "make deps: apt-get failed (if the package lock was held, rerun once it is free)"; exit $$code; fi; \
	for unit in haproxy prometheus; do case " $$missing " in *" $$unit "*) \
	  ! command -v systemctl >/dev/null || systemctl disable -q $$unit 2>/dev/null || true;; esac; done

container-test: container-deps $(VENV)/.container-test-installed $(CONTAINER_BASE)  ## the image and deploy/compose.yaml under podman, real calls (slow: docs/deployment.md)
	@start=$$(date +%s); \
	ANGER_STREAM_CONTAINER_BASE=$(CONTAINER_BASE) nice -n 10 $(BIN)/python -m pytest -q -rs tests/test_container.py; code=$$?; \
	echo "container-test: $$(( $$(date +%s) - start )) s"; exit $$code

container-deps:  ## system packages for container-test (Debian): podman, runc, netavark, debootstrap, espeak-ng, sox
	@missing=$$(for p in $(CONTAINER_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then $(APT_GET) update && \
	    DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y --no-install-recommends $$missing; \
	  else echo "please install: sudo apt-get install --no-install-recommends $$missing"; exit 1; fi; \
	fi

$(VENV)/.container-test-installed: $(VENV)/.test-installed
	$(BIN)/pip install -q "podman-compose>=1.2,<2"
	touch $@

# The test's base image: Debian bookworm (minbase) with Python, the audio libraries, HAProxy and Prometheus, and
# this host's trust store (for pip behind a TLS-inspecting proxy). Cached outside the repository.
$(CONTAINER_BASE): | container-deps
	@[ "$$(id -u)" = 0 ] || { echo "debootstrap needs root: run as root or place a base tarball at $@"; exit 1; }
	mkdir -p $(CONTAINER_CACHE) && rm -rf $(CONTAINER_CACHE)/rootfs
	nice -n 10 debootstrap --variant=minbase --include=$(CONTAINER_BASE_PACKAGES) bookworm $(CONTAINER_CACHE)/rootfs \
	  $(DEBIAN_MIRROR)
	cp /etc/ssl/certs/ca-certificates.crt $(CONTAINER_CACHE)/rootfs/etc/ssl/certs/ca-certificates.crt
	rm -rf $(CONTAINER_CACHE)/rootfs/var/cache/apt/archives/*.deb $(CONTAINER_CACHE)/rootfs/var/lib/apt/lists/*
	nice -n 10 tar -C $(CONTAINER_CACHE)/rootfs -cf $@.tmp . && mv $@.tmp $@ && rm -rf $(CONTAINER_CACHE)/rootfs

$(BIN)/anger-stream:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .

# The CPU build of torch, pinned: from the configured index or --find-links where it has it, else from PyTorch's
# CPU index (plain PyPI has no +cpu build, and its torch==2.13.0 is the CUDA one). Never a loose torch requirement.
$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)" --extra-index-url $(TORCH_CPU_INDEX)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

model: $(VENV)/.test-installed  ## retrain and export the packaged models (fast, full; fp32, int8) from $(SHARED)
	$(BIN)/python -m tools.train $(TRAIN_MANIFESTS) --dev $(SHARED)/data/emodb/manifest.csv \
	  --pretrained $(SHARED)/pretrained/soundnet8_conv1-5.npz --variant T3 --seed 11 --steps 5000 --eval-every 250 \
	  --threads 1 --workers 1 --min-active 0.25 --zero-noise --channels 0.8 --select channels \
	  --teacher $(SHARED)/pretrained/yamnet/yamnet.tflite --teacher-weight 1.0 --teacher-embedding 10 --out runs/$(RUN)
	$(BIN)/python -m tools.train.voice --checkpoint runs/$(RUN)/best.pt $(TRAIN_MANIFESTS) \
	  --dev $(SHARED)/data/emodb/manifest.csv --out runs/$(RUN)/voice.pt
	$(BIN)/python -m tools.train.export --checkpoint runs/$(RUN)/voice.pt --out models/anger_fcn.onnx
	$(BIN)/python -m tools.train.quantize --model models/anger_fcn.onnx --out models/anger_fcn.int8.onnx \
	  $(TRAIN_MANIFESTS) --windows 2048 --evaluate --dev $(SHARED)/data/emodb/manifest.csv --report docs/quantize.json
	$(BIN)/python -m tools.train.two_branch --fcn models/anger_fcn.onnx --yamnet $(SHARED)/pretrained/yamnet/yamnet.tflite \
	  $(TRAIN_MANIFESTS) --dev $(SHARED)/data/emodb/manifest.csv --patches centre --out models/anger_full.onnx \
	  --log models/training/two_branch_centre.json
	$(BIN)/python -m tools.train.quantize --model models/anger_full.onnx --out models/anger_full.int8.onnx \
	  $(TRAIN_MANIFESTS) --windows 512 --keep-float-scope /log_mel/ --evaluate --dev $(SHARED)/data/emodb/manifest.csv \
	  --report docs/quantize-full.json

evaluate: $(VENV)/.test-installed  ## window and utterance AUROC of the shipped model on the test speakers
	$(BIN)/python -m tools.evaluate --model models/anger_fcn.onnx --manifest $(SHARED)/data/ravdess/manifest.csv \
	  --manifest $(SHARED)/data/ased/manifest.csv --manifest $(SHARED)/data/nemo/manifest.csv \
	  --manifest $(SHARED)/data/emodb/manifest.csv --json runs/eval.json

bench: $(VENV)/.test-installed  ## the runtime benchmark: rewrites docs/benchmarks.md and .json (about 3 min)
	$(BIN)/python -m tools.bench runtime --speech $(SHARED)/data/emodb/manifest.csv \
	  --speech $(SHARED)/data/ravdess/manifest.csv --out docs/benchmarks

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
