"""OwnProcess: calls answered from a spawned worker, its exceptions raised here, its death an error.

The worker objects are modules made with importlib.import_module (spawn needs a factory it can
import by name; pytest's importlib mode makes test modules unimportable there).
"""
from __future__ import annotations

import importlib
import os
import signal

import numpy as np
import pytest

from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.runtime_bench.own_process import OwnProcess, WorkerDied


def test_calls_run_in_another_process_and_return_their_values():
    with OwnProcess(importlib.import_module, "os", label="os module") as worker:
        child = worker.call("getpid")
        assert child != os.getpid()
        assert worker.call("getpid") == child  # the same worker answers every call
        assert worker.call("getcwd") == os.getcwd()


def test_the_workers_exceptions_are_raised_with_their_types():
    with OwnProcess(importlib.import_module, "bilayer_mobile.runtime_bench.compositor", label="compositor") as worker:
        with pytest.raises(InputError, match="texture has shape"):
            worker.call("_checked", np.zeros((1, 3, 2, 2)), np.zeros((2, 2)), np.zeros((1, 2, 2, 2)))
        with pytest.raises(ValueError, match="unknown sampling mode") as caught:
            worker.call("_check_mode", "nearest")
        assert any("in the worker process" in note for note in caught.value.__notes__)
        assert worker.call("_as_array", [1, 2]).tolist() == [1, 2]  # still serving after errors


def test_a_failed_construction_is_raised():
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        OwnProcess(importlib.import_module, "no_such_module", label="missing module")


@pytest.mark.timeout(120)
def test_a_worker_killed_by_a_signal_is_an_error_not_a_hang():
    worker = OwnProcess(importlib.import_module, "os", label="doomed worker")
    child = worker.call("getpid")
    with pytest.raises(WorkerDied, match=r"doomed worker process died in kill\(\) \(killed by SIGSEGV\)"):
        worker.call("kill", child, signal.SIGSEGV)  # what a crashing GPU driver does
    with pytest.raises(WorkerDied, match="no longer running"):
        worker.call("getpid")
    worker.close()


@pytest.mark.timeout(120)
def test_a_worker_that_dies_while_starting_is_an_error_not_a_hang():
    with pytest.raises(WorkerDied, match=r"died starting \(exit code 3\)"):
        OwnProcess(os._exit, 3, label="short-lived worker")
