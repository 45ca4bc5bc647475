"""An object that lives in a fresh process of its own, for GPU drivers that cannot share ours.

With coremltools 9.0 loaded in a process (the Core ML export and its host check load it), LiteRT
2.3's GPU accelerator, Mesa's EGL (moderngl) and its Vulkan driver (wgpu) crash that process with
a segmentation fault. So everything that drives a GPU here is built and called in a worker
started with `spawn` (a fresh interpreter that imports only what the object needs):

    with OwnProcess(CompiledGpuModel, path, False, label="LiteRT GPU accelerator") as model:
        outputs = model.call("infer", feed)

`call` sends the method name and arguments over a pipe and returns the answer, or raises the
worker's exception (its own type when it pickles, `RuntimeError` with its text otherwise). When
the worker dies instead of answering (a driver crash, a kill), `call` raises `WorkerDied` with the
exit code: never a hang. As with any `spawn` worker, a script that makes one needs the
`if __name__ == "__main__":` guard (the command-line tool and pytest have it).
"""
from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from typing import Any, Callable


class WorkerDied(RuntimeError):
    """The worker process ended without answering (a crash in a native library, or a kill)."""


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (so the parent raises the same type), else a RuntimeError
    with its type and text; either way with the worker's traceback as a note for debugging."""
    text = "".join(traceback.format_exception(exc))
    try:
        exc = pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001  (an exception type that does not pickle)
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.__traceback__ = None
    exc.add_note(f"in the worker process:\n{text}")
    return exc


def _serve(connection, factory: Callable, args: tuple) -> None:
    """The worker: build the object, say so, then answer (method, args, kwargs) until None."""
    try:
        target = factory(*args)
    except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
        connection.send(("error", _portable(exc)))
        return
    connection.send(("ok", None))
    while (request := connection.recv()) is not None:
        method, method_args, kwargs = request
        try:
            connection.send(("ok", getattr(target, method)(*method_args, **kwargs)))
        except Exception as exc:  # noqa: BLE001
            connection.send(("error", _portable(exc)))


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class OwnProcess:
    """`factory(*args)` built in a spawned worker process and called by method name.

    The constructor returns once the object exists (raising what its construction raised);
    `call(method, *args, **kwargs)` runs one method there; `close()` (or leaving a `with` block,
    or garbage collection) stops the worker. `label` names the object in error messages.
    """

    def __init__(self, factory: Callable, *args: Any, label: str):
        self.label = label
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._worker = context.Process(target=_serve, args=(child, factory, args), daemon=True)
        self._worker.start()
        child.close()  # so that recv() sees end-of-file when the worker dies
        self._answer("starting")

    def _answer(self, doing: str):
        try:
            status, value = self._connection.recv()
        except (EOFError, ConnectionResetError):
            self._worker.join(5)
            code = self._worker.exitcode
            self._worker = None
            raise WorkerDied(f"the {self.label} process died {doing} ({_exit_description(code)})") from None
        if status == "error":
            raise value
        return value

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The worker's `target.method(*args, **kwargs)`: its return value, or its exception."""
        if self._worker is None:
            raise WorkerDied(f"the {self.label} process is no longer running")
        try:
            self._connection.send((method, args, kwargs))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died since the last answer: _answer says how
        return self._answer(f"in {method}()")

    def close(self) -> None:
        """Stop the worker: asked to, then killed if it has not stopped within 10 s."""
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is None:
            return
        if worker.is_alive():
            try:
                self._connection.send(None)
            except OSError:
                pass
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
        self._connection.close()

    def __enter__(self) -> "OwnProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        self.close()
