"""The contract's method signatures against a component's: what the host calls, checked
with :func:`inspect.signature` before anything is called.

A kind's contract is its Protocol (:attr:`denoisekit.Kind.protocol`): a sampler's
``sample(denoiser, x_T, /, *, generator, cond=None, callback=None)``, a backbone's
``(x_t, t, cond=None, /)`` (its module's ``forward``), a loss's
``(model_output, /, *, x0, noise, t)``, a metric's ``(context, /)``, data's ``__len__`` and
``__getitem__``, an optimizer's and an lr schedule's ``step``/``state_dict``/
``load_state_dict``. A schedule has attributes only (its probe checks them), a hook's
methods are checked against the hook specifications
(:func:`~denoisekit.host.contract_checks.hook_problems`).

How the host passes each parameter is the contract: positionally before the ``/`` (the
names there are the plugin's to choose), by name after the ``*``, either way between.
A method matches when it accepts every call the host makes (with every parameter, and
with the optional ones left out) and a parameter named like one of the contract's stands
where the contract puts it: so 0.1's ``sample(denoiser, shape, *, ..., x_T=None)``, which
Python would bind, is caught by its keyword ``x_T``.
"""

from __future__ import annotations

import inspect
from typing import Any

from denoisekit.contracts import KIND

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_ORDINALS = ("first", "second", "third", "fourth", "fifth")

#: Contract methods changed since 0.1.0, with the CHANGELOG.md entry saying how; the
#: others are as 0.1.0 had them.
CHANGED: dict[tuple[str, str], str] = {
    ("sampler", "sample"): "the contract changed in 0.2.0: see CHANGELOG.md, 'The sampler "
    "contract', and docs/writing-a-plugin.md, 'Migrating from 0.1'",
}
#: Kinds new since 0.1.0, with where their contract is described.
NEW_KINDS: dict[str, str] = {"autoencoder": "a kind new in 0.2.0: see docs/latent.md"}
UNCHANGED = "the contract is unchanged since 0.1.0: see docs/writing-a-plugin.md"


def contract_methods(kind: str) -> tuple[tuple[str, str], ...]:
    """``(component method, contract method)`` pairs of ``kind``: ``Kind.methods``, and a
    backbone's ``forward`` (what ``nn.Module.__call__`` runs) for ``Backbone.__call__``."""
    if kind == "backbone":
        return (("forward", "__call__"),)
    return tuple((m, m) for m in KIND[kind].methods)


def signature_problems(kind: str, component: Any) -> list[str]:
    """What ``component`` (a class, unbuilt, or a built instance) gets wrong about the
    signatures of ``kind``'s contract methods, one line each (empty when they match or
    cannot be read: C functions, missing methods, which other checks report)."""
    problems = []
    owner = component.__name__ if isinstance(component, type) else type(component).__name__
    for method, contract_name in contract_methods(kind):
        actual = _method_signature(component, method)
        contract = getattr(KIND[kind].protocol, contract_name, None)
        if actual is None or contract is None:
            continue
        expected = _without_first(inspect.signature(contract))
        reason = mismatch(expected, actual)
        if reason:
            where = CHANGED.get((kind, method)) or NEW_KINDS.get(kind, UNCHANGED)
            problems.append(
                f"{owner}.{method}{text(actual)} does not match the contract's "
                f"{method}{text(expected)}: {reason} ({where})"
            )
    return problems


def mismatch(expected: inspect.Signature, actual: inspect.Signature) -> str | None:
    """Why a method of signature ``actual`` does not take the calls the host makes to
    one of signature ``expected`` (both without ``self``), or None."""
    contract = list(expected.parameters.values())
    positional = [p for p in contract if p.kind in _POSITIONAL]
    mine = actual.parameters
    my_positional = [p.name for p in mine.values() if p.kind in _POSITIONAL]
    for i, p in enumerate(positional):
        same = mine.get(p.name)
        if same is not None and (same.kind not in _POSITIONAL or my_positional.index(p.name) != i):
            where = _ORDINALS[i] if i < len(_ORDINALS) else f"number {i + 1}"
            return (
                f"{p.name!r} is {_kind_text(same, my_positional)} here, but the host passes "
                f"it {where}, positionally"
            )
    for p in contract:
        same = mine.get(p.name)
        if p.kind == p.KEYWORD_ONLY and same is not None and same.kind == same.POSITIONAL_ONLY:
            return f"{p.name!r} is positional-only here, but the host passes it by name"
    for call in _calls(contract):
        args, kwargs = call
        try:
            actual.bind(*args, **kwargs)
        except TypeError as exc:
            shown = [*(a for a in args), *(f"{k}=..." for k in kwargs)]
            return f"it cannot be called as ({', '.join(shown)}): {exc}"
    return None


def text(signature: inspect.Signature) -> str:
    """``signature`` as source shows it, without annotations."""
    bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=signature.empty))


def _calls(contract: list[inspect.Parameter]) -> list[tuple[list[str], dict[str, str]]]:
    """The calls the host may make: every parameter and the required ones only, each with
    the parameters it may pass either way passed positionally, then by name."""
    calls = []
    for params in (contract, [p for p in contract if p.default is p.empty]):
        for by_name in (False, True):
            positional = _POSITIONAL[:1] if by_name else _POSITIONAL
            args = [p.name for p in params if p.kind in positional]
            kwargs = {p.name: "..." for p in params if p.name not in args}
            if (args, kwargs) not in calls:
                calls.append((args, kwargs))
    return calls


def _kind_text(param: inspect.Parameter, positional: list[str]) -> str:
    if param.kind == param.KEYWORD_ONLY:
        return "keyword-only"
    if param.kind in _POSITIONAL:
        i = positional.index(param.name)
        return f"positional {_ORDINALS[i] if i < len(_ORDINALS) else f'number {i + 1}'}"
    return f"*{param.name}" if param.kind == param.VAR_POSITIONAL else f"**{param.name}"


def _method_signature(component: Any, name: str) -> inspect.Signature | None:
    method = getattr(component, name, None)
    if not callable(method):
        return None
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # C methods without one: trust them
        return None
    if isinstance(component, type) and not isinstance(
        inspect.getattr_static(component, name, None), staticmethod | classmethod
    ):
        return _without_first(signature)  # self
    return signature


def _without_first(signature: inspect.Signature) -> inspect.Signature:
    params = list(signature.parameters.values())
    if params and params[0].kind in _POSITIONAL:
        params = params[1:]
    return signature.replace(parameters=params)
