"""Plugin options: read from a factory's signature, parsed and checked against it.

``--model-opt ngf=32`` becomes ``{"ngf": 32}`` after checking that the model's
constructor takes ``ngf``, that ``32`` fits its annotated type and, for an option
declared as ``ngf: Annotated[int, Range(1)] = 64``, that it lies in the range.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
import typing
from typing import Any, Callable, Iterable, Mapping

from zoo.errors import UsageError

_MISSING = inspect.Parameter.empty
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_HOOK_FORM = "HOOK.KEY=VALUE (e.g. early_stopping.patience=5)"


@dataclasses.dataclass(frozen=True)
class Range:
    """Inclusive bounds of a numeric option: ``ngf: Annotated[int, Range(1)] = 64``."""

    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise ValueError("Range needs a low or a high bound")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Range low {self.low} is above high {self.high}")

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in [{self.low}, {self.high}]"
        return f">= {self.low}" if self.low is not None else f"<= {self.high}"

    def describe(self) -> str:
        """The range in words, e.g. ``at least 1`` or ``between 0 and 1``."""
        if self.low is not None and self.high is not None:
            return f"between {self.low} and {self.high}"
        return f"at least {self.low}" if self.low is not None else f"at most {self.high}"

    def contains(self, value: Any) -> bool:
        """True for ``None``, non-numbers (the type check reports those) and numbers in range."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        # written as "not below, not above" so that NaN fits no range
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a plugin: its name, type, default, range and whether it is required."""

    name: str
    annotation: Any
    default: Any
    range: Range | None = None

    @property
    def required(self) -> bool:
        """True when the factory gives no default."""
        return self.default is _MISSING

    @property
    def type_name(self) -> str:
        """A short readable type and range, e.g. ``str | None`` or ``int >= 1``."""
        if self.annotation is _MISSING:
            name = type(self.default).__name__ if not self.required and self.default is not None else "any"
        elif isinstance(self.annotation, type):
            name = self.annotation.__name__
        else:
            name = str(self.annotation).replace("typing.", "")
        return f"{name} {self.range}" if self.range is not None else name


def _callable_of(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory.__init__ if inspect.isclass(factory) else factory


def option_specs(factory: Callable[..., Any], exclude: Iterable[str] = ()) -> list[OptionSpec]:
    """The keyword options a class or function takes, minus ``exclude``."""
    target = _callable_of(factory)
    try:  # the types (typing strips Annotated at every depth), and the hints with their Range marks
        hints, marked = typing.get_type_hints(target), typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: fall back to defaults' types
        hints, marked = {}, {}
    skip = set(exclude) | {"self"}
    specs = []
    for param in inspect.signature(target).parameters.values():
        if param.name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = marked.get(param.name, param.annotation)
        if isinstance(annotation, str):  # one unresolvable hint spoils get_type_hints: resolve this one alone
            try:
                annotation = eval(annotation, getattr(target, "__globals__", {}))  # noqa: S307 - plugin code
            except Exception:
                annotation = _MISSING  # fall back to the default's type
        bounds = _range_of(annotation)
        annotation = hints.get(param.name, _without_annotated(annotation))
        specs.append(OptionSpec(param.name, annotation, param.default, bounds))
    return specs


def option_values(factory: Callable[..., Any], given: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Every option of ``factory`` (minus ``exclude``): the value ``given``, else its default, as config.json keeps it.

    Only values JSON holds as they are (None, bool, int, float, str and lists of those; a tuple becomes a list);
    a required option without a value is left out. Given options the signature lacks (``**kwargs``) are kept.
    """
    exclude = set(exclude)
    values = {spec.name: given.get(spec.name, spec.default) for spec in option_specs(factory, exclude)
              if spec.name in given or not spec.required}
    values.update({key: value for key, value in given.items() if key not in values and key not in exclude})
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()
            if _json_safe(value)}


def _json_safe(value: Any) -> bool:
    """Whether config.json holds ``value`` as it is: None, bool, int, float, str, or a list or tuple of those."""
    if isinstance(value, (list, tuple)):
        return all(_json_safe(item) and not isinstance(item, (list, tuple)) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _range_of(annotation: Any) -> Range | None:
    """The Range marking an option's number: on the hint itself or on the non-None member of ``X | None``."""
    candidates = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        candidates += [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    for candidate in candidates:
        if typing.get_origin(candidate) is typing.Annotated:
            found = next((mark for mark in candidate.__metadata__ if isinstance(mark, Range)), None)
            if found is not None:
                return found
    return None


def _without_annotated(annotation: Any) -> Any:
    """``Annotated[T, ...]`` as ``T`` (the top level: deeper ones are rare where typing could not resolve)."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _convert(text: str, annotation: Any, default: Any) -> Any:
    """Convert one command-line string to the annotated type; raise ValueError if it does not fit."""
    if annotation is _MISSING or annotation is Any:
        if default in (_MISSING, None):  # nothing says the type: read it as a literal
            return _literal(text)
        annotation = type(default)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if type(None) in members and text.strip().lower() in {"none", "null", ""}:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(text, member, default)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors))
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"one of {', '.join(map(str, choices))}")
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("true or false")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("an integer") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("a number") from None
    if annotation is str:
        return text
    if origin in (tuple, list):
        inner = typing.get_args(annotation)
        parts = [p for p in text.split(",") if p.strip()]
        item_type = inner[0] if inner else str
        return origin(_convert(p.strip(), item_type, _MISSING) for p in parts)
    return text


def _literal(text: str) -> Any:
    """An untyped option's value: none, true/false, an integer or a number as such, else the text."""
    lowered = text.strip().lower()
    if lowered in {"none", "null"}:
        return None
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text  # nan and inf stay text: say them with a float hint
    return text


def missing_required(what: str, factory: Callable[..., Any], given: Iterable[str], flag: str,
                     exclude: Iterable[str] = ()) -> None:
    """Refuse, naming the flag to pass, a call of ``factory`` that would leave options without a default unset."""
    given = set(given)
    missing = [spec.name for spec in option_specs(factory, exclude) if spec.required and spec.name not in given]
    if missing:
        passes = " ".join(f"{flag}{name}=VALUE" for name in missing)
        raise UsageError(f"{what} needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)}: pass {passes}.")


def _coerce_typed(value: Any, spec: OptionSpec) -> Any:
    """Accept an already-typed value (from a TOML config, or recorded in config.json) if it fits the option."""
    if value is None and spec.default is None:  # a recorded "unset" default, whatever the hint (default_problem)
        return None
    if isinstance(value, list) and (isinstance(spec.default, tuple) or typing.get_origin(spec.annotation) is tuple):
        value = tuple(value)  # config.json keeps a tuple as a list
    if isinstance(value, str):
        return _convert(value, spec.annotation, spec.default)
    return _typed_value(value, spec.annotation)


def _typed_value(value: Any, expected: Any) -> Any:
    """A typed value (TOML) checked against a hint: plain types and their unions (``str | None``)."""
    if expected is _MISSING or expected is Any:
        return value
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        members = typing.get_args(expected)
        if value is None and type(None) in members:
            return None
        for member in members:
            try:
                return _typed_value(value, member)
            except ValueError:
                continue
        raise ValueError(" or ".join(_type_words(m) for m in members if m is not type(None)))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(expected, type):
        if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
            raise ValueError(_type_words(expected))
    return value


def default_problem(spec: OptionSpec) -> str | None:
    """What is wrong with an option's own default (not of its declared type, or outside its range), or None.

    A ``None`` default is taken whatever the hint (``size: int = None`` is a common spelling of "unset").
    """
    if spec.required or spec.default is None:
        return None
    try:
        _typed_value(spec.default, spec.annotation)
    except ValueError as exc:
        return f"its default {spec.default!r} is not {exc}"
    if spec.range is not None and not spec.range.contains(spec.default):
        return f"its default {spec.default!r} is not {spec.range.describe()}"
    return None


def _type_words(expected: Any) -> str:
    """A type as the messages say it: "an integer", "a number", "a str"."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(expected, f"a {getattr(expected, '__name__', expected)}")


def parse_options(what: str, factory: Callable[..., Any], raw: dict[str, Any],
                  exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``raw`` option values against ``factory``'s signature and convert them.

    ``what`` names the plugin in messages, e.g. ``"model 'dcgan'"``. Unknown keys
    and values of the wrong type or out of range are usage errors with a fix.
    """
    specs = {spec.name: spec for spec in option_specs(factory, exclude)}
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in specs:
            close = difflib.get_close_matches(key, list(specs), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            known = ", ".join(specs) or "none"
            raise UsageError(f"{what} has no option '{key}'.{hint} Its options: {known}.")
        try:
            parsed[key] = _coerce_typed(value, specs[key])
        except ValueError as exc:
            raise UsageError(f"{what} option {key} expects {exc}, got {value!r}.") from None
        bounds = specs[key].range
        if bounds is not None and not bounds.contains(parsed[key]):
            raise UsageError(f"{what} option {key} must be {bounds.describe()}, got {parsed[key]}.")
    return parsed


def split_assignments(pairs: Iterable[str], flag: str, form: str = "KEY=VALUE") -> dict[str, str]:
    """Turn ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``; a pair without '=' is a usage error showing ``form``."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects {form}, got {pair!r}.")
        result[key.strip()] = value.strip()
    return result


def split_hook_assignments(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """Turn ``["early_stopping.patience=5"]`` into ``{"early_stopping": {"patience": "5"}}``."""
    result: dict[str, dict[str, str]] = {}
    for key, value in split_assignments(pairs, "--hook-opt", _HOOK_FORM).items():
        hook, dot, option = key.rpartition(".")
        if not dot or not hook or not option:
            raise UsageError(f"--hook-opt expects {_HOOK_FORM}, got {key}={value!r}.")
        result.setdefault(hook, {})[option] = value
    return result
