"""EDM's backbones (DDPM++/NCSN++ ``SongUNet``, ADM ``DhariwalUNet``) and ``EDMPrecond``, skip-tunable.

Constructor keywords, defaults and ``state_dict`` keys match NVlabs/edm ``training/networks.py``, so
EDM checkpoints load with ``strict=True``. On top of EDM, every backbone owns a non-persistent
``skip_coefficients`` buffer: the decoder multiplies the j-th long skip it consumes (j = 0 innermost)
by ``coef[j]`` for the samples selected by ``skip_mask``. Coefficients are read inside ``forward`` so
changing them never rebuilds or recompiles the network, and all-ones coefficients multiply by exactly
1.0, which leaves every value bit-identical to the untuned network.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.functional import silu

from skiptune.errors import SkiptuneError
from skiptune.nets.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from skiptune.registry import Registry

__all__ = ["BACKBONES", "DhariwalUNet", "EDMPrecond", "SkipTunableBackbone", "SongUNet", "one_hot_labels"]


def one_hot_labels(labels: torch.Tensor, label_dim: int) -> torch.Tensor:
    """Integer class indices ``[N]`` become one-hot float32 ``[N, label_dim]``; float labels pass through."""
    if labels.is_floating_point():
        return labels
    return torch.nn.functional.one_hot(labels.reshape(-1).long(), label_dim).to(torch.float32)


def check_resolution(img_resolution: int, channel_mult: Sequence[int], example: str = "[1, 2, 2]") -> None:
    """Reject an empty ``channel_mult`` or a resolution the UNet's levels cannot halve down to."""
    if not channel_mult:
        raise SkiptuneError(
            f"channel_mult is empty; give one channel multiplier per resolution, e.g. {example}"
        )
    steps = 2 ** (len(channel_mult) - 1)
    if img_resolution <= 0 or img_resolution % steps:
        raise SkiptuneError(
            f"img_resolution={img_resolution} cannot be halved {len(channel_mult) - 1} times "
            f"(channel_mult={list(channel_mult)}); use a positive multiple of {steps}"
        )


def _check_common(img_resolution: int, channel_mult: Sequence[int], label_dim: int, augment_dim: int) -> None:
    """Reject configurations that EDM would only fail on later with a shape error."""
    check_resolution(img_resolution, channel_mult)
    if label_dim < 0 or augment_dim < 0:
        raise SkiptuneError(f"label_dim={label_dim}, augment_dim={augment_dim}: both must be >= 0")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SkiptuneError(f"{name}={value!r} is not supported; expected one of {', '.join(choices)}")


class SkipTunableBackbone(torch.nn.Module):
    """Base of the backbones: owns ``num_skips`` and the ``skip_coefficients`` buffer."""

    num_skips: int
    skip_coefficients: torch.Tensor
    enc: torch.nn.ModuleDict
    dec: torch.nn.ModuleDict

    def _init_skips(self, pushed_channels: Sequence[int]) -> None:
        """``pushed_channels``: channels of the skips in the order the encoder pushes them."""
        self._skip_channels = [int(c) for c in reversed(pushed_channels)]
        self.num_skips = len(self._skip_channels)
        ones = torch.ones(self.num_skips, dtype=torch.float32)
        self.register_buffer("skip_coefficients", ones, persistent=False)

    def skip_channels(self) -> list[int]:
        """Channels of skip j, in decoder consumption order (j = 0 innermost)."""
        return list(self._skip_channels)

    def _skip_factors(self, skip_mask: torch.Tensor | None) -> torch.Tensor:
        """Per-sample factors ``[N or 1, num_skips]``: ``coef`` where the mask holds, else 1."""
        coef = self.skip_coefficients.to(torch.float32).unsqueeze(0)
        if skip_mask is None:
            return coef
        mask = skip_mask.to(device=coef.device, dtype=torch.bool).reshape(-1, 1)
        return torch.where(mask, coef, torch.ones_like(coef))

    @staticmethod
    def _scaled_skip(skip: torch.Tensor, factors: torch.Tensor, j: int) -> torch.Tensor:
        return skip * factors[:, j].reshape(-1, 1, 1, 1).to(skip.dtype)

    def _concat_skip(
        self, x: torch.Tensor, skip: torch.Tensor, factors: torch.Tensor, j: int
    ) -> torch.Tensor:
        """``cat([x, factor_j * skip])`` along channels, kept in ``x``'s memory format.

        Traced, a concatenation may be laid out NCHW although its inputs are channels_last; its
        readers (group norm, the 1x1 skip convolution) would then transpose it. This pins the layout
        (a no-op in eager mode, where ``cat`` keeps channels_last already).
        """
        out = torch.cat([x, self._scaled_skip(skip, factors, j)], dim=1)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _labels_for(self, class_labels: torch.Tensor | None, label_dim: int) -> torch.Tensor:
        if class_labels is None:
            raise SkiptuneError(
                f"this {type(self).__name__} is class-conditional (label_dim={label_dim}) but got "
                "class_labels=None; pass one-hot [N, label_dim] or integer [N] labels"
            )
        return one_hot_labels(class_labels, label_dim)


BACKBONES: Registry[type[SkipTunableBackbone]] = Registry("backbone")


@BACKBONES.decorator("SongUNet")
class SongUNet(SkipTunableBackbone):
    """DDPM++ / NCSN++ UNet of Song et al. (2021) as re-implemented by EDM."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        _check_choice("embedding_type", embedding_type, ("fourier", "positional"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        _check_common(img_resolution, channel_mult, label_dim, augment_dim)
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init: dict[str, Any] = dict(init_mode="xavier_uniform")
        block_kwargs: dict[str, Any] = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=dict(init_mode="xavier_uniform", init_weight=1e-5),
            init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)),
        )
        if embedding_type == "positional":
            self.map_noise: torch.nn.Module = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = torch.nn.ModuleDict()
        cout, pushed = self._build_encoder(
            in_channels,
            img_resolution,
            model_channels,
            channel_mult,
            num_blocks,
            attn_resolutions,
            encoder_type,
            resample_filter,
            block_kwargs,
        )
        # Auxiliary encoder branches add into the preceding skip instead of pushing a new one.
        self._init_skips(pushed)
        self.dec = torch.nn.ModuleDict()
        self._build_decoder(
            cout,
            out_channels,
            img_resolution,
            model_channels,
            channel_mult,
            num_blocks,
            attn_resolutions,
            decoder_type,
            resample_filter,
            block_kwargs,
        )

    def _build_encoder(
        self,
        cin: int,
        img_resolution: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_blocks: int,
        attn_resolutions: Sequence[int],
        encoder_type: str,
        resample_filter: Sequence[float],
        block_kwargs: dict[str, Any],
    ) -> tuple[int, list[int]]:
        init = block_kwargs["init"]
        cout, caux = cin, cin
        pushed: list[int] = []  # auxiliary branches add into the preceding skip instead of pushing a new one
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux,
                        cout,
                        kernel=3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **init,
                    )
                    caux = cout
            pushed.append(cout)
            for idx in range(num_blocks):
                block_in, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    block_in, cout, attention=attn, **block_kwargs
                )
                pushed.append(cout)
        return cout, pushed

    def _build_decoder(
        self,
        cout: int,
        out_channels: int,
        img_resolution: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_blocks: int,
        attn_resolutions: Sequence[int],
        decoder_type: str,
        resample_filter: Sequence[float],
        block_kwargs: dict[str, Any],
    ) -> None:
        skips = list(reversed(self._skip_channels))
        top = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == top:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < top:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    cout, out_channels, kernel=3, init_mode="xavier_uniform", init_weight=1e-5
                )

    def _embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos] order, as DDPM++
        if self.map_label is not None:
            labels = self._labels_for(class_labels, self.map_label.in_features)
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        return silu(self.map_layer1(emb))

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
        skip_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self._embed(noise_labels, class_labels, augment_labels)
        skips: list[torch.Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        return self._decode(x, emb, skips, self._skip_factors(skip_mask))

    def _decode(
        self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor], factors: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor | None = None
        feat = x
        j = 0
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif isinstance(block, GroupNorm):  # aux_norm
                feat = block.act(x)
            elif "aux_conv" in name:
                feat = block(feat)
                out = feat if out is None else feat + out
            else:
                if x.shape[1] != block.in_channels:
                    x = self._concat_skip(x, skips.pop(), factors, j)
                    j += 1
                x = block(x, emb)
        assert out is not None  # level 0 always ends with aux_conv
        return out


@BACKBONES.decorator("DhariwalUNet")
class DhariwalUNet(SkipTunableBackbone):
    """ADM UNet of Dhariwal & Nichol (2021) as re-implemented by EDM."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ) -> None:
        _check_common(img_resolution, channel_mult, label_dim, augment_dim)
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        root3: float = math.sqrt(1 / 3)
        init: dict[str, Any] = dict(init_mode="kaiming_uniform", init_weight=root3, init_bias=root3)
        init_zero: dict[str, Any] = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs: dict[str, Any] = dict(
            emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero
        )
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (
            Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        )
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(
                label_dim,
                emb_channels,
                bias=False,
                init_mode="kaiming_normal",
                init_weight=math.sqrt(label_dim),
            )
            if label_dim
            else None
        )
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        pushed: list[int] = []  # every encoder output is a skip
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            pushed.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                attn = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                pushed.append(cout)
        self._init_skips(pushed)
        self.dec = torch.nn.ModuleDict()
        skips = list(reversed(self._skip_channels))
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def _embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = self._labels_for(class_labels, self.map_label.in_features)
            if self.training and self.label_dropout:
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        return silu(emb)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
        skip_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self._embed(noise_labels, class_labels, augment_labels)
        factors = self._skip_factors(skip_mask)
        skips: list[torch.Tensor] = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        j = 0
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = self._concat_skip(x, skips.pop(), factors, j)
                j += 1
            x = block(x, emb)
        return self.out_conv(self.out_norm.act(x))


def precond_labels(
    class_labels: torch.Tensor | None, label_dim: int, device: torch.device
) -> torch.Tensor | None:
    """Labels as a preconditioning passes them on: one-hot float32 ``[N, label_dim]``, or EDM's
    all-zero label (the unconditional direction, broadcast over the batch) when none are given."""
    if label_dim == 0:
        return None
    if class_labels is None:
        return torch.zeros([1, label_dim], device=device)
    labels = one_hot_labels(torch.as_tensor(class_labels, device=device), label_dim)
    return labels.to(torch.float32).reshape(-1, label_dim)


def window_mask(skip_window: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per sample: is its sigma inside ``skip_window = [lo, hi]`` (both ends included)?"""
    window = skip_window.to(device=sigma.device, dtype=torch.float32)
    return ((sigma >= window[0]) & (sigma <= window[1])).reshape(-1)


def _build_backbone(model_type: str, **kwargs: Any) -> SkipTunableBackbone:
    """``BACKBONES[model_type](**kwargs)``, with a clear error for keywords the backbone lacks."""
    backbone = BACKBONES.get(model_type)
    try:
        inspect.signature(backbone).bind(**kwargs)
    except TypeError as exc:
        raise SkiptuneError(
            f"{model_type} does not accept the arguments {sorted(kwargs)}: {exc}; "
            f"see the {model_type} constructor for its keywords"
        ) from None
    return backbone(**kwargs)


class SkipTunablePrecond(torch.nn.Module):
    """What every EDM preconditioning shares: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``
    around a skip-tunable backbone ``model``, labels, and the ``skip_window`` buffer.

    ``skip_window`` (non-persistent, ``[lo, hi]``) selects the samples whose sigma lies in
    ``[lo, hi]``; only those get the backbone's skip coefficients. Subclasses give the four
    coefficients in ``_coefficients``.
    """

    skip_window: torch.Tensor

    def _setup(self, init_kwargs: dict[str, Any], model_type: str, model_kwargs: dict[str, Any]) -> None:
        # The constructor arguments, so save_checkpoint() can rebuild the net without a config.
        self.init_kwargs: dict[str, Any] = copy.deepcopy(
            {**init_kwargs, "model_type": model_type, **model_kwargs}
        )
        self.img_resolution: int = init_kwargs["img_resolution"]
        self.img_channels: int = init_kwargs["img_channels"]
        self.label_dim: int = init_kwargs["label_dim"]
        self.use_fp16: bool = init_kwargs["use_fp16"]
        self.model: SkipTunableBackbone = _build_backbone(
            model_type,
            img_resolution=self.img_resolution,
            in_channels=self.img_channels,
            out_channels=self.img_channels,
            label_dim=self.label_dim,
            **model_kwargs,
        )
        window = torch.tensor([-math.inf, math.inf], dtype=torch.float32)
        self.register_buffer("skip_window", window, persistent=False)

    def _coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for float32 sigma ``[N, 1, 1, 1]``."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        backbone_dtype: torch.dtype | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """``D(x, sigma)`` in float32. The backbone runs at ``backbone_dtype`` when given (the fast
        path's bf16), else by EDM's rule: float16 where ``use_fp16`` on CUDA, unless ``force_fp32``."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        labels = self._class_labels(class_labels, x)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = backbone_dtype or (torch.float16 if fp16 else torch.float32)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        skip_mask = window_mask(self.skip_window, sigma)
        f_x = self.model(
            (c_in * x).to(dtype), c_noise.flatten(), class_labels=labels, skip_mask=skip_mask, **model_kwargs
        )
        return c_skip * x + c_out * f_x.to(torch.float32)

    def _class_labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        return precond_labels(class_labels, self.label_dim, x.device)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)


class EDMPrecond(SkipTunablePrecond):
    """EDM preconditioning (Karras et al. 2022) around a backbone."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        init = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            use_fp16=use_fp16,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
        )
        self._setup(init, model_type, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def _coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[float | torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4
