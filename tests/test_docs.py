"""The documents that are generated from code are current."""
from __future__ import annotations

from pathlib import Path

from bilayer_mobile.cli import DOC_BEGIN, DOC_END
from bilayer_mobile.export.graphs import contract_graphs, contract_tables
from bilayer_mobile.reference import BilayerConfig, BilayerModel

PROJECT = Path(__file__).resolve().parents[1]


def test_contract_doc_tables_are_the_graphs_own_spec():
    """docs/contract.md's tables equal what the graphs declare at the paper configuration
    (regenerate them with `make docs`)."""
    text = (PROJECT / "docs" / "contract.md").read_text()
    block = text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0].strip()
    expected = contract_tables(contract_graphs(BilayerModel(BilayerConfig.paper()).eval())).strip()
    assert block == expected, "docs/contract.md is out of date: run `make docs`"
    assert "| out | `image` | [1, 3, 256, 256] | float32 | - | image, gated |" in block
