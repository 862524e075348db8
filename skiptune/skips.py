"""Skip-Tuning: a (rho_bottom, rho_top) schedule turned into per-skip coefficients inside a network.

A :class:`SkipSchedule` says how strongly each long skip connection of a UNet is scaled. With k + 1
skips ordered by the decoder's consumption order (j = 0 innermost, consumed first; j = k outermost)::

    rho_j = rho_bottom + (rho_top - rho_bottom) * j / k

How the coefficients reach a network is the job of a :class:`SkipAdapter`, looked up in
:data:`SKIP_ADAPTERS`: our EDM nets hold them in buffers (written with ``copy_``, so a compiled net is
never rebuilt or recompiled), diffusers UNets get forward pre-hooks, and users can describe any
other UNet with a :class:`HookSkipAdapter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from skiptune.errors import SkiptuneError
from skiptune.registry import Registry

#: The coefficients skiptune accepts, inclusive. Below 0 a skip's sign flips; at 0 the skip is cut
#: off. Far above 1 the decoder sees skip activations it never saw in training: the paper's tuned
#: values lie in 0.5-1.2 and the demo model's optima in 0.3-1.15 (docs/results.md), so 2 leaves room
#: while ruling out typos (``--rho 1 10``). Used by every schedule, search box and grown box.
RHO_HARD_LIMITS = (0.0, 2.0)


@dataclass(frozen=True)
class SkipSchedule:
    """Linear Skip-Tuning schedule from the innermost (``rho_bottom``) to the outermost (``rho_top``) skip.

    ``sigma_window = (lo, hi)`` applies the coefficients only while ``lo <= sigma <= hi`` (native EDM
    nets only); ``None`` applies them at every noise level.
    """

    rho_bottom: float = 1.0
    rho_top: float = 1.0
    sigma_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("rho_bottom", "rho_top"):
            object.__setattr__(self, name, check_rho(name, _finite_float(name, getattr(self, name))))
        if self.sigma_window is not None:
            object.__setattr__(self, "sigma_window", _checked_window(self.sigma_window))

    def coefficients(self, num_skips: int) -> list[float]:
        """The coefficient of each skip, j = 0 (innermost, consumed first) to num_skips - 1."""
        if isinstance(num_skips, bool) or not isinstance(num_skips, int) or num_skips < 1:
            raise SkiptuneError(f"num_skips must be a positive integer, got {num_skips!r}")
        if num_skips == 1:
            return [self.rho_bottom]
        k = num_skips - 1
        return [self.rho_bottom + (self.rho_top - self.rho_bottom) * j / k for j in range(num_skips)]

    @property
    def is_identity(self) -> bool:
        """True when the schedule leaves the network unchanged (every coefficient is exactly 1)."""
        return self.rho_bottom == 1.0 and self.rho_top == 1.0

    def to_dict(self) -> dict[str, Any]:
        window = None if self.sigma_window is None else list(self.sigma_window)
        return {"rho_bottom": self.rho_bottom, "rho_top": self.rho_top, "sigma_window": window}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkipSchedule:
        unknown = set(data) - {"rho_bottom", "rho_top", "sigma_window"}
        if unknown:
            raise SkiptuneError(
                f"unknown skip schedule keys {sorted(unknown)}; expected rho_bottom, rho_top, sigma_window"
            )
        window = data.get("sigma_window")
        return cls(
            rho_bottom=data.get("rho_bottom", 1.0),
            rho_top=data.get("rho_top", 1.0),
            sigma_window=window,  # validated and made a tuple in __post_init__
        )


def _finite_float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SkiptuneError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise SkiptuneError(f"{name} must be a finite number, got {value!r}")
    return number


def check_rho(name: str, value: float) -> float:
    """``value`` if it lies within :data:`RHO_HARD_LIMITS`, else one line naming the limits."""
    lo, hi = RHO_HARD_LIMITS
    if not lo <= value <= hi:
        raise SkiptuneError(
            f"{name} {value:g} is outside the hard limits [{lo:g}, {hi:g}] of skip coefficients "
            "(1 = untuned; the paper's tuned values lie in 0.5-1.2); pass a value inside them"
        )
    return value


def _checked_window(window: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in window)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise SkiptuneError(f"sigma_window must be a pair (lo, hi) of numbers, got {window!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not math.isfinite(lo) or not 0.0 <= lo <= hi:
        raise SkiptuneError(
            f"sigma_window {window!r} is invalid; expected 0 <= lo <= hi with finite lo (hi may be inf)"
        )
    return (lo, hi)


class SkipHandle:
    """Undoes one application of a schedule; ``restore()`` is idempotent."""

    def __init__(self, restore: Callable[[], None]) -> None:
        self._restore: Callable[[], None] | None = restore

    def restore(self) -> None:
        if self._restore is not None:
            undo, self._restore = self._restore, None
            undo()


@runtime_checkable
class SkipAdapter(Protocol):
    """Knows one family of networks: whether a net belongs to it, its skips, how to scale them."""

    def matches(self, net: torch.nn.Module) -> bool: ...

    def num_skips(self, net: torch.nn.Module) -> int: ...

    def apply(self, net: torch.nn.Module, schedule: SkipSchedule) -> SkipHandle: ...


SKIP_ADAPTERS: Registry[SkipAdapter] = Registry("skip adapter")


def find_adapter(net: torch.nn.Module) -> SkipAdapter:
    """The registered adapter that handles ``net``; a clear error when none does."""
    for name in SKIP_ADAPTERS:
        adapter = SKIP_ADAPTERS.get(name)
        if adapter.matches(net):
            return adapter
    kind = f"{type(net).__module__}.{type(net).__qualname__}"
    raise SkiptuneError(
        f"no skip adapter handles networks of type {kind}; registered adapters: "
        f"{', '.join(SKIP_ADAPTERS.names())}. Describe its skip connections with "
        "skiptune.skips.HookSkipAdapter and register it: SKIP_ADAPTERS.register('my-net', adapter)"
    )


def apply_skip_schedule(net: torch.nn.Module, schedule: SkipSchedule) -> SkipHandle:
    """Scale the skips of ``net`` by ``schedule`` until ``handle.restore()``."""
    return find_adapter(net).apply(net, schedule)


@contextmanager
def skip_tuning(net: torch.nn.Module, schedule: SkipSchedule) -> Iterator[torch.nn.Module]:
    """``with skip_tuning(net, schedule): ...`` runs with tuned skips and restores them on exit."""
    handle = apply_skip_schedule(net, schedule)
    try:
        yield net
    finally:
        handle.restore()


# --- native EDM nets: coefficients in non-persistent buffers -------------------------------------


def _edm_backbone(net: torch.nn.Module) -> torch.nn.Module | None:
    for candidate in (net, getattr(net, "model", None)):
        if isinstance(candidate, torch.nn.Module) and isinstance(
            getattr(candidate, "skip_coefficients", None), torch.Tensor
        ):
            return candidate
    return None


class NativeSkipAdapter:
    """Our EDM-compatible nets: writes ``skip_coefficients`` / ``skip_window`` buffers in place.

    Only ``Tensor.copy_`` is used, so module structure, tensor identity and any ``torch.compile``
    graph stay valid: a new schedule costs nothing but the copy.
    """

    def matches(self, net: torch.nn.Module) -> bool:
        return _edm_backbone(net) is not None

    def num_skips(self, net: torch.nn.Module) -> int:
        backbone = _edm_backbone(net)
        if backbone is None:
            raise SkiptuneError(f"{type(net).__name__} has no skip_coefficients buffer")
        return int(backbone.get_buffer("skip_coefficients").numel())

    def apply(self, net: torch.nn.Module, schedule: SkipSchedule) -> SkipHandle:
        backbone = _edm_backbone(net)
        if backbone is None:
            raise SkiptuneError(f"{type(net).__name__} has no skip_coefficients buffer")
        window_buf = getattr(net, "skip_window", None)
        if schedule.sigma_window is not None and not isinstance(window_buf, torch.Tensor):
            raise SkiptuneError(
                f"sigma_window {schedule.sigma_window} needs the preconditioned net (EDMPrecond), which "
                f"knows sigma; {type(net).__name__} is a bare backbone. Pass the precond net or drop "
                "the window"
            )
        coef_buf = backbone.get_buffer("skip_coefficients")
        coefs = schedule.coefficients(coef_buf.numel())
        writes = [(coef_buf, torch.tensor(coefs, dtype=torch.float32))]
        if isinstance(window_buf, torch.Tensor):
            lo, hi = schedule.sigma_window or (-math.inf, math.inf)
            writes.append((window_buf, torch.tensor([lo, hi], dtype=torch.float32)))
        saved = [buf.detach().clone() for buf, _ in writes]
        _copy_into([buf for buf, _ in writes], [value for _, value in writes])
        return SkipHandle(lambda: _copy_into([buf for buf, _ in writes], saved))


def _copy_into(buffers: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for buf, value in zip(buffers, values):
            buf.copy_(value.to(device=buf.device, dtype=buf.dtype))


# --- user-described nets: forward hooks at listed skip points -------------------------------------


@dataclass(frozen=True)
class SkipPoint:
    """Where one skip tensor can be scaled: a submodule's input argument or its output.

    ``module`` is a dotted name for ``net.get_submodule``. ``where="input"`` scales the forward
    argument ``arg`` (a position, or a keyword name) of that module: use it for the decoder module
    that receives the skip tensor. ``where="output"`` scales the module's output: use it for a module
    that sits on the skip path only (its output feeds nothing but the decoder's concatenation).
    """

    module: str
    where: Literal["input", "output"] = "input"
    arg: int | str = 0


class HookSkipAdapter:
    """A skip adapter for any UNet, described by its skip points in decoder consumption order.

    Example, for a UNet whose decoder blocks ``dec.0``, ``dec.1``, ``dec.2`` (innermost first) take the
    skip tensor as their second positional argument::

        from skiptune.skips import SKIP_ADAPTERS, HookSkipAdapter, SkipPoint, SkipSchedule, skip_tuning

        adapter = HookSkipAdapter(
            net_type=MyUNet,
            points=[SkipPoint("dec.0", arg=1), SkipPoint("dec.1", arg=1), SkipPoint("dec.2", arg=1)],
        )
        SKIP_ADAPTERS.register("my-unet", adapter)
        with skip_tuning(net, SkipSchedule(rho_bottom=1.1, rho_top=0.9)):
            out = net(x, t)

    ``net_type`` may also be a predicate ``Callable[[Module], bool]``. Hooks are removed on restore.
    """

    def __init__(
        self, *, net_type: type | Callable[[torch.nn.Module], bool], points: Sequence[SkipPoint]
    ) -> None:
        if not points:
            raise SkiptuneError("HookSkipAdapter needs at least one SkipPoint")
        self._net_type = net_type
        self.points = list(points)

    def matches(self, net: torch.nn.Module) -> bool:
        if isinstance(self._net_type, type):
            return isinstance(net, self._net_type)
        return bool(self._net_type(net))

    def num_skips(self, net: torch.nn.Module) -> int:
        return len(self.points)

    def apply(self, net: torch.nn.Module, schedule: SkipSchedule) -> SkipHandle:
        if schedule.sigma_window is not None:
            raise SkiptuneError("sigma_window is only supported on native EDM nets; drop it for this net")
        coefs = schedule.coefficients(len(self.points))
        handles = [_hook_point(net, point, coef) for point, coef in zip(self.points, coefs)]
        return SkipHandle(_remover(handles))


def _hook_point(net: torch.nn.Module, point: SkipPoint, coef: float) -> Any:
    try:
        module = net.get_submodule(point.module)
    except AttributeError:
        raise SkiptuneError(
            f"skip point {point.module!r} is not a submodule of {type(net).__name__}"
        ) from None
    if point.where == "output":
        return module.register_forward_hook(lambda _m, _args, out: out * coef)

    def scale_input(_m: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if isinstance(point.arg, str) and point.arg in kwargs:
            kwargs = {**kwargs, point.arg: kwargs[point.arg] * coef}
        elif isinstance(point.arg, int) and point.arg < len(args):
            args = (*args[: point.arg], args[point.arg] * coef, *args[point.arg + 1 :])
        else:
            raise SkiptuneError(f"skip point {point.module!r}: forward got no argument {point.arg!r}")
        return args, kwargs

    return module.register_forward_pre_hook(scale_input, with_kwargs=True)


def _remover(handles: Sequence[Any]) -> Callable[[], None]:
    def remove_all() -> None:
        for handle in handles:
            handle.remove()

    return remove_all


class DiffusersSkipAdapter:
    """diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` (or a wrapper holding one as ``.unet``)."""

    def matches(self, net: torch.nn.Module) -> bool:
        from skiptune.nets import diffusers as dnets

        return dnets.find_diffusers_unet(net) is not None

    def num_skips(self, net: torch.nn.Module) -> int:
        from skiptune.nets import diffusers as dnets

        return dnets.num_diffusers_skips(self._unet(net))

    def apply(self, net: torch.nn.Module, schedule: SkipSchedule) -> SkipHandle:
        from skiptune.nets import diffusers as dnets

        if schedule.sigma_window is not None:
            raise SkiptuneError(
                "sigma_window is not supported for diffusers UNets (their hooks do not see sigma); "
                "drop the window or convert the model to an EDM-compatible net"
            )
        unet = self._unet(net)
        handles = dnets.scale_diffusers_skips(unet, schedule.coefficients(dnets.num_diffusers_skips(unet)))
        return SkipHandle(_remover(handles))

    @staticmethod
    def _unet(net: torch.nn.Module) -> torch.nn.Module:
        from skiptune.nets import diffusers as dnets

        unet = dnets.find_diffusers_unet(net)
        if unet is None:
            raise SkiptuneError(f"{type(net).__name__} is not a diffusers UNet2DModel/UNet2DConditionModel")
        return unet


SKIP_ADAPTERS.register("edm", NativeSkipAdapter())
SKIP_ADAPTERS.register("diffusers", DiffusersSkipAdapter())
