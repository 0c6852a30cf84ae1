# carvana-unet: `make demo` runs the whole job on the embedded default, `make test` runs the tests.
# Both create the virtualenv they need in .venv from nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# A Kaggle-layout folder to use instead of the synthetic sample, e.g. CARVANA_DATA=../shared/carvana
CARVANA_DATA ?=
DEMO   ?= demo

.PHONY: venv test test-fast lint demo demo-data demo-train demo-evaluate demo-serve clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Lint: ruff's rules, ruff's format, and mypy over the packages (each setting in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# The unit tier (about a minute): no servers, no training, no real photos (tests/conftest.py decides).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The whole job on the embedded default (a synthetic sample; CARVANA_DATA=/path uses Kaggle's layout):
# data -> TFRecords -> a local training job -> evaluation -> masks and cut-outs -> endpoint -> Lambda.
DEMO_SIZE   ?= 128x192
DEMO_EPOCHS ?= 15
# Job names are unique, as on SageMaker; jobs/latest points at the newest one.
DEMO_JOB    := demo-$(shell date +%Y%m%d-%H%M%S)
MODEL_TAR   := $(DEMO)/jobs/latest/output/model.tar.gz
CARVANA     := PATH="$(CURDIR)/$(BIN):$$PATH" TF_CPP_MIN_LOG_LEVEL=2 carvana

demo: demo-data demo-train demo-evaluate demo-serve
	@echo "demo finished: see $(DEMO)/"

demo-data: $(STAMP)
	@if [ -n "$(CARVANA_DATA)" ]; then echo "using $(CARVANA_DATA)"; rm -rf $(DEMO)/data; mkdir -p $(DEMO); \
	  ln -sfn "$(abspath $(CARVANA_DATA))" $(DEMO)/data; \
	else $(CARVANA) make-sample --out $(DEMO)/data --cars 8; fi
	$(CARVANA) convert --data $(DEMO)/data --out $(DEMO)/tfrecords --size $(DEMO_SIZE) --val-fraction 0.25
	$(CARVANA) preview --tfrecords $(DEMO)/tfrecords --split train --out $(DEMO)/preview.png

demo-train: $(STAMP)
	$(CARVANA) fit --backend local --work $(DEMO)/jobs --job-name $(DEMO_JOB) --data $(DEMO)/tfrecords \
	  --image-size $(DEMO_SIZE) --epochs $(DEMO_EPOCHS) --batch-size 8 --hp max-minutes=4
	ln -sfn $(DEMO_JOB) $(DEMO)/jobs/latest

demo-evaluate: $(STAMP)
	$(CARVANA) evaluate --model $(MODEL_TAR) --data $(DEMO)/data \
	  --manifest $(DEMO)/tfrecords --split validation --worst 4 --out $(DEMO)/evaluation
	@# Four views of a validation car (never seen in training) for predict and the Lambda.
	rm -rf $(DEMO)/photos && mkdir -p $(DEMO)/photos && car=$$($(BIN)/python -c "import json; \
	  print(json.load(open('$(DEMO)/tfrecords/manifest.json'))['splits']['validation']['cars'][0])") && \
	  for n in 01 05 09 13; do cp $(DEMO)/data/train/$${car}_$$n.jpg $(DEMO)/photos/; done
	$(CARVANA) predict $(DEMO)/photos --model $(MODEL_TAR) --cutout \
	  --out $(DEMO)/predictions
	$(CARVANA) package --model-dir $(DEMO)/jobs/latest/opt/ml/model --out $(DEMO)/model.tar.gz

# The user's last step: serve the model, call the Lambda through the local API gateway (which, like
# the deployed API, only serves SigV4-signed requests: curl signs them with the demo's key pair).
SERVE_PORT   ?= 8080
GATEWAY_PORT ?= 3000
demo-serve: $(STAMP)
	@set -e; mkdir -p $(DEMO)/lambda; \
	export ENDPOINT_NAME=carvana-unet AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:$(SERVE_PORT) \
	  AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local; \
	$(CARVANA) serve --model $(DEMO)/model.tar.gz --port $(SERVE_PORT) > $(DEMO)/serve.log 2>&1 & srv=$$!; \
	$(CARVANA) gateway --handler lambda/handler.py --port $(GATEWAY_PORT) > $(DEMO)/gateway.log 2>&1 & gw=$$!; \
	trap 'kill $$srv $$gw 2>/dev/null; wait $$srv $$gw 2>/dev/null' EXIT; \
	for i in $$(seq 240); do curl -sf -o /dev/null http://127.0.0.1:$(SERVE_PORT)/ping && \
	  curl -s -o /dev/null http://127.0.0.1:$(GATEWAY_PORT)/ && break; sleep 0.5; done; \
	sign='--aws-sigv4 aws:amz:us-east-1:execute-api --user local:local'; \
	for photo in $(DEMO)/photos/*.jpg; do name=$$(basename $$photo .jpg); \
	  curl -sS --fail $$sign --data-binary @$$photo -H 'Content-Type: image/jpeg' \
	    http://127.0.0.1:$(GATEWAY_PORT)/mask -o $(DEMO)/lambda/$${name}_mask.png; \
	  curl -sS --fail $$sign --data-binary @$$photo -H 'Content-Type: image/jpeg' \
	    "http://127.0.0.1:$(GATEWAY_PORT)/mask?format=cutout" -o $(DEMO)/lambda/$${name}_cutout.png; \
	  echo "lambda -> $(DEMO)/lambda/$${name}_mask.png, $${name}_cutout.png"; done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache *.egg-info
