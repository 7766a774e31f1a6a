"""Typed options: strict pydantic models shared by the run config and by every registered method,
refinement and allocation, so an option's type and default are written once, next to its code.

An unknown option or a wrong type is one line naming it (the CLI reports it with exit code 2)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictInt, ValidationError, create_model

from .errors import UserError


class Strict(BaseModel):
    """Unknown keys refused; scalars not coerced (``seeds: [true]`` is not seed 1, ``"8"`` not 8)."""
    model_config = ConfigDict(extra="forbid")


Int = StrictInt
Bool = StrictBool


def _number(v: Any) -> Any:
    """A float field accepts ints (YAML ``1``) but never a bool or a string."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, got {v!r}")
    return float(v)


Number = Annotated[float, BeforeValidator(_number)]


class NoOptions(Strict):
    """Options of an entry that takes none."""


def options_model(name: str, options: type[BaseModel] | dict | None) -> type[BaseModel]:
    """The options model of a registry entry: a model as given, or one built from a ``{name: default}``
    dict (values of any type; for plugins that register plain defaults)."""
    if options is None:
        return NoOptions
    if isinstance(options, type) and issubclass(options, BaseModel):
        return options
    return create_model(f"{name}Options", __base__=Strict, **{k: (Any, v) for k, v in dict(options).items()})


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """``{option: default}`` of an options model (what ``polyprune list`` documents)."""
    return {k: f.get_default(call_default_factory=True) for k, f in model.model_fields.items()}


def describe(model: type[BaseModel]) -> str:
    """``"options: a=0.5, scope=matrix"`` (empty for an entry without options)."""
    items = ", ".join(f"{k}={v}" for k, v in defaults(model).items())
    return f"options: {items}" if items else ""


def fill(kind: str, name: str, model: type[BaseModel], options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` validated against ``model``, with every default filled in: what the entry's
    function receives. Unknown option or wrong type → one UserError line naming it."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        raise UserError(f"{kind} {name!r} has no option {unknown[0]!r}: valid options are "
                        f"{', '.join(sorted(model.model_fields)) or 'none'}")
    try:
        return model.model_validate(options).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UserError(f"{kind} {name!r}: option {key!r} {msg[:1].lower()}{msg[1:]} (got {options.get(key)!r}): "
                        f"give a value of type {_type_name(model, key)}") from None


def _type_name(model: type[BaseModel], key: str) -> str:
    ann = model.model_fields[key].annotation if key in model.model_fields else None
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


__all__ = ["Bool", "Int", "NoOptions", "Number", "Strict", "defaults", "describe", "fill", "options_model"]
