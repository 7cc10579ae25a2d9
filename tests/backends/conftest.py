"""Fixtures for the backend tests: tiny offline models and the persistent model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.backends.tiny_models import build_tiny_blenderbot, build_tiny_gpt2


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Where converted GGUF models are cached between test runs (only the first run converts)."""
    configured = os.environ.get("CHINWAG_MODEL_CACHE")
    path = Path(configured) if configured else Path.home() / ".cache" / "chinwag" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with a ChatML template; the name makes `auto` pick dialogpt."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-dialogpt")


@pytest.fixture(scope="session")
def tiny_blenderbot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BlenderBot (encoder-decoder) with 64 positions."""
    return build_tiny_blenderbot(tmp_path_factory.mktemp("models") / "tiny-blenderbot")
