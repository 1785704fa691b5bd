"""Tiny engines for the framework integration tests.

A randomly initialised tiny model mostly emits whitespace, end-of-turn or stray high bytes,
which decode to nothing; the LangChain standard suites require visible text. These engines
therefore only let the tiny model pick letters, digits and spaces (a mask on its output
logits): the text stays random and is never empty. Their hypernetworks' B heads are scaled
up tenfold so that adapters visibly change what the tiny model writes.
"""

from __future__ import annotations

import pytest

from doc2lora_rag import Doc2LoRA
from tests.conftest import make_text_engine


@pytest.fixture(scope="session")
def text_engine() -> Doc2LoRA:
    return make_text_engine()
