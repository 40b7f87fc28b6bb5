"""The status -> exception edge (csrc/common/status.hpp <-> pyhpc/errors.py)."""

from __future__ import annotations

import pickle

import pytest

import pyhpc
from pyhpc import _core
from pyhpc.errors import Status, from_status


def test_python_status_mirrors_cpp_enum():
    cpp = _core.status_names()
    assert {int(s): s.name for s in Status} == {code: name for code, name in cpp.items()}


@pytest.mark.parametrize("status", [s for s in Status if s != Status.OK])
def test_binding_raises_the_subclass_for_each_status(status):
    with pytest.raises(pyhpc.Error) as info:
        _core._raise_status_for_test(int(status), "boom")
    err = info.value
    assert err.status == status
    assert type(err) is type(from_status(int(status), ""))
    # The message names where the failure started and the CHECK it passed through.
    assert "core.cpp" in str(err) and "boom" in str(err) and " <- " in str(err)


def test_errors_are_also_builtin_kinds():
    assert isinstance(from_status(Status.INVALID_ARGUMENT, "x"), ValueError)
    assert isinstance(from_status(Status.TIMEOUT, "x"), TimeoutError)
    assert isinstance(from_status(Status.PEER, "x"), ConnectionError)
    assert isinstance(from_status(Status.MPI_MISMATCH, "x"), ImportError)


@pytest.mark.parametrize("cls", [pyhpc.InvalidArgumentError, pyhpc.PeerError, pyhpc.MPIError])
def test_errors_pickle_with_status(cls):
    err = cls("rank 3 vanished", cls.default_status)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and copy.status == err.status and str(copy) == "rank 3 vanished"


def test_unknown_and_ok_status_become_internal_errors():
    assert isinstance(from_status(999, "m"), pyhpc.InternalError)
    assert isinstance(from_status(0, "m"), pyhpc.InternalError)
