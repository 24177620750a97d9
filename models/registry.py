"""Name -> constructor table for every network occlufer trains (timm's registry habit).

Recipes, the trainer and the exporter refer to networks by name only, so adding a network is
one decorated function; `list_models()` is what the CLI offers. Constructors take keyword
configuration (`num_classes`, `in_chans`, ...) and return an `nn.Module` that follows the
expression-network contract documented in `models/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: make `fn(**cfg) -> nn.Module` available as `create_model(name, **cfg)`.

    A second registration under the same name is an error rather than a silent override: two
    files claiming one name would make checkpoints ambiguous.
    """

    def decorate(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is already registered by "
                             f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return decorate


def create_model(name: str, **cfg) -> nn.Module:
    """Build the registered network `name` with keyword configuration `cfg`."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    model = fn(**cfg)
    model.model_name = name  # the exporter writes it into the ONNX metadata
    return model


def list_models() -> list[str]:
    """Registered network names, sorted."""
    return sorted(_REGISTRY)
