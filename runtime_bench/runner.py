"""What every runtime runner has in common: its inputs and outputs, described by name.

A runner (one per runtime, as in Polygraphy) loads one model file, sets `_inputs` and
`_outputs` to lists of tensor infos (objects with `name`, `shape`, `dtype`), and implements
`run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]` by name, never by position.
"""
from __future__ import annotations


class Runner:
    _inputs: list
    _outputs: list

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self._outputs]

    @property
    def inputs(self) -> list:
        return list(self._inputs)

    @property
    def outputs(self) -> list:
        return list(self._outputs)
