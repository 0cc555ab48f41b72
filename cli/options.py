"""Typer options made from a config dataclass: one option per field, declared once.

The option's name is the field's (``batch_size`` -> ``--batch-size``), its type and
default the field's, its help the field's docstring. :class:`Flag` overrides what the
command line spells differently (``json_path`` is ``--json``; ``hidden`` is typed as
``256,256,256``). :func:`config_command` turns a command body that takes a
``config`` into a Typer command whose signature holds the body's own arguments,
then every config field, then ``--progress/--no-progress``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from hipi_offline.configs import field_docs, nested

FLAGS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "FLAGS", default=types.MappingProxyType({})
)
"""Field name -> flag of the command being run (read by the error handler)."""


UNSET: Any = object()
"""A :class:`Flag` default that says "the field's own"."""


class LazyGroup(TyperGroup):
    """A command group that makes a command (its options, and so the imports of its
    config: torch, MuJoCo) only when that command is looked up, so that ``inspect``
    does not wait for torch. ``factories`` is set per app by :func:`lazy_app`."""

    factories: dict[str, Callable[[], Callable[..., None]]] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(n for n in self.factories if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in self.factories:
            single = typer.Typer()
            single.command(cmd_name)(self.factories[cmd_name]())
            self.commands[cmd_name] = typer.main.get_group(single).commands[cmd_name]
        return super().get_command(ctx, cmd_name)


def lazy_app(**settings: Any) -> typer.Typer:
    """A Typer app whose commands (added by :func:`add_command`) are made on demand."""
    group = type("Commands", (LazyGroup,), {"factories": {}})
    app = typer.Typer(cls=group, **settings)
    app.callback()(_no_options)  # a group even before any command is made
    app.lazy_group = group  # type: ignore[attr-defined]
    return app


def _no_options() -> None:
    pass


def add_command(app: typer.Typer, name: str, factory: Callable[[], Callable[..., None]]) -> None:
    """Register the command ``name`` of a :func:`lazy_app`: ``factory()`` returns its
    function (with its signature) when the command is first looked up."""
    app.lazy_group.factories[name] = factory  # type: ignore[attr-defined]


def resolve(cls: type | str) -> type:
    """A class, or ``"package.module:Class"`` imported now."""
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        return getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line where it differs from the field."""

    name: str | None = None
    """The flag (``--json``); default: the field's name with dashes."""
    type: Any = None
    """The type the command line parses; default: from the field's type."""
    default: Any = UNSET
    """The command line's default (in its ``type``); default: the field's."""
    parse: Callable[[Any], Any] | None = None
    """Command-line value -> field value."""
    help: str | None = None
    """Help text; default: the field's docstring."""


def flag_name(field: str, flags: Mapping[str, Flag] | None = None) -> str:
    """``batch_size`` -> ``--batch-size`` (or the name a :class:`Flag` gives)."""
    override = (flags or {}).get(field)
    if override is not None and override.name is not None:
        return override.name
    return "--" + field.replace("_", "-")


def _plain(help_text: str) -> str:
    """A docstring as help text: reST markup (``code``, :class:`X`) removed."""
    help_text = re.sub(r":\w+:`~?([^`]+)`", r"\1", help_text)
    return help_text.replace("``", "")


def _cli_type(hint: Any) -> tuple[Any, Callable[[Any], Any] | None]:
    """The type Typer parses for a field's type, and how its value becomes the field's."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    optional = type(None) in options
    rest = [o for o in options if o is not type(None)]
    if all(o in (str, Path) for o in rest) and Path in rest:
        base: Any = Path
    elif len(rest) == 1:
        base = rest[0]
    else:
        raise TypeError(f"no command-line type for {hint!r}; give a Flag with a type")
    parse = None
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a repeatable option
            return list[args[0]] | None, lambda v: tuple(v or ())  # type: ignore[valid-type]
        parse = tuple
    return (base | None if optional else base), parse


def _typed(hint: Any, override: Flag) -> tuple[Any, Callable[[Any], Any] | None]:
    """The command line's type of a field and its parser, a :class:`Flag`'s if it has one."""
    if override.type is not None:
        return override.type, override.parse
    cli_type, parse = _cli_type(hint)
    return cli_type, override.parse or parse


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


@dataclass(frozen=True)
class _Option:
    field: str
    parameter: inspect.Parameter
    parse: Callable[[Any], Any] | None


def config_options(cls: type, flags: Mapping[str, Flag] | None = None) -> list[_Option]:
    """One keyword-only Typer parameter per field of the dataclass ``cls``."""
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for f in fields(cls):
        override = flags.get(f.name, Flag())
        cli_type, parse = _typed(hints[f.name], override)
        if override.default is not UNSET:
            default = override.default
        elif f.default is not MISSING:
            default = f.default
            if isinstance(default, tuple) and typing.get_origin(cli_type) is not tuple:
                default = list(default) or None
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty  # a required option
        help_text = _plain(override.help or docs.get(f.name, ""))
        names = () if cli_type is bool else (flag_name(f.name, flags),)
        option = typer.Option(*names, help=help_text)
        parameter = inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[cli_type, option],
        )
        options.append(_Option(f.name, parameter, parse))
    return options


def override_options(
    cls: type, prefix: str = "", flags: Mapping[str, Flag] | None = None, skip: tuple[str, ...] = ()
) -> list[_Option]:
    """Options that replace fields of a preset of ``cls``: each defaults to None (keep
    the preset's value); its name is ``prefix`` + the field's (``train_steps``,
    ``--train-steps``). Fields in ``skip`` and fields holding dataclasses are left out."""
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for f in fields(cls):
        if f.name in skip or _holds_dataclass(hints[f.name]):
            continue
        override = flags.get(f.name, Flag())
        cli_type, parse = _typed(hints[f.name], override)
        if typing.get_origin(cli_type) is not tuple and type(None) not in typing.get_args(cli_type):
            cli_type = cli_type | None
        name = prefix + f.name
        help_text = _plain(override.help or docs.get(f.name, "")) + " (default: the preset's)"
        option = typer.Option(
            *(() if bool in _members(cli_type) else (flag_name(name),)),
            help=help_text,
            show_default=False,
        )
        parameter = inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[cli_type, option],
        )
        options.append(_Option(f.name, parameter, parse))
    return options


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if _is_union(hint) else (hint,)


def _holds_dataclass(hint: Any) -> bool:
    """A dataclass field, or a tuple of dataclasses (an experiment's environments)."""
    members = [*_members(hint), *(a for m in _members(hint) for a in typing.get_args(m))]
    return any(isinstance(m, type) and dataclasses.is_dataclass(m) for m in members)


def overridden(preset: Any, options: list[_Option], values: Mapping[str, Any]) -> Any:
    """``preset`` with the fields whose options were given (not None) replaced."""
    changes = {}
    for o in options:
        value = values[o.parameter.name]
        if value is not None and value != []:
            flag = flag_name(o.parameter.name)
            with nested(lambda name, o=o, flag=flag: flag if name == o.field else name):
                changes[o.field] = o.parse(value) if o.parse else value
    return dataclasses.replace(preset, **changes) if changes else preset


PROGRESS = inspect.Parameter(
    "progress",
    inspect.Parameter.KEYWORD_ONLY,
    default=True,
    annotation=Annotated[bool, typer.Option(help="Show progress bars.")],
)


def config_command(
    app: typer.Typer,
    name: str,
    cls: type | str | None = None,
    flags: Mapping[str, Flag] | None = None,
    on_progress: Callable[[bool], None] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``body(config, **own)`` as the command ``name`` of a :func:`lazy_app`:
    its options are the body's own parameters (besides ``config``), every field of
    ``cls`` (a class or ``"module:Class"``, imported when the command is looked up),
    and ``--progress/--no-progress`` where ``cls`` has no ``progress`` field (then
    ``on_progress`` receives it first). ``body`` makes the config by calling its
    ``config`` argument, inside its error handling, so that a bad value is reported
    like every other input error. Without ``cls`` the body takes no ``config``."""

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        add_command(app, name, lambda: _command(name, body, cls, flags or {}, on_progress))
        return body

    return decorate


def _own_parameters(body: Callable[..., None]) -> list[inspect.Parameter]:
    """``body``'s parameters besides ``config``, keyword-only, annotations evaluated."""
    own = []
    for p in inspect.signature(body).parameters.values():
        if p.name == "config":
            continue
        annotation = p.annotation
        if isinstance(annotation, str):
            annotation = eval(annotation, body.__globals__)  # noqa: S307 - our own source
        own.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    return own


def _command(
    name: str,
    body: Callable[..., None],
    cls: type | str | None,
    flags: Mapping[str, Flag],
    on_progress: Callable[[bool], None] | None,
) -> Callable[..., None]:
    """The Typer command function of :func:`config_command`."""
    config_class = None if cls is None else resolve(cls)
    options = [] if config_class is None else config_options(config_class, flags)
    names = {o.field for o in options}
    field_flags = {o.field: flag_name(o.field, flags) for o in options}
    own = _own_parameters(body)
    clash = names & {p.name for p in own}
    if clash:
        raise TypeError(f"{name}: parameters {sorted(clash)} are config fields")
    parameters = [*own, *(o.parameter for o in options)]
    if "progress" not in names:
        parameters.append(PROGRESS)

    @functools.wraps(body)
    def command(**values: Any) -> None:
        if "progress" not in names:
            progress = values.pop("progress")
            if on_progress is not None:
                on_progress(progress)
        own_values = {p.name: values.pop(p.name) for p in own}

        def make_config() -> Any:
            parsed = {
                o.field: o.parse(values[o.field]) if o.parse else values[o.field]
                for o in options
                if values[o.field] is not inspect.Parameter.empty
            }
            return config_class(**parsed)  # type: ignore[misc]

        if config_class is not None:
            own_values["config"] = make_config
        token = FLAGS.set(field_flags)
        try:
            body(**own_values)
        finally:
            FLAGS.reset(token)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command
