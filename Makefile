# The one door: `make test`, `make bench`, `make lint`. CI calls `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck bench proto clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

typecheck: lint

bench: $(STAMP)
	$(BIN)/rtbench run --quick

# Regenerates the committed gRPC/protobuf modules from servers/proto/rtbench.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I servers/proto --python_out=servers/proto \
		--pyi_out=servers/proto --grpc_python_out=servers/proto servers/proto/rtbench.proto
	sed -i 's/^import rtbench_pb2 as/from servers.proto import rtbench_pb2 as/' servers/proto/rtbench_pb2_grpc.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
