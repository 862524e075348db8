"""EDM's backbones (DDPM++/NCSN++ ``SongUNet``, ADM ``DhariwalUNet``) and ``EDMPrecond``, skip-tunable.

Constructor keywords, defaults and ``state_dict`` keys match NVlabs/edm ``training/networks.py``, so
EDM checkpoints load with ``strict=True``. On top of EDM, every backbone (built on
``skiptune.nets.base``) owns a non-persistent ``skip_coefficients`` buffer: the decoder multiplies the
j-th long skip it consumes (j = 0 innermost) by ``coef[j]`` for the samples selected by ``skip_mask``.
Coefficients are read inside ``forward`` so changing them never rebuilds or recompiles the network, and
all-ones coefficients multiply by exactly 1.0, which leaves every value bit-identical to the untuned
network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.functional import silu

from skiptune.errors import SkiptuneError
from skiptune.nets.base import (
    BACKBONES,
    Coefficients,
    SkipTunableBackbone,
    SkipTunablePrecond,
    check_resolution,
    edm_coefficients,
    one_hot_labels,
)
from skiptune.nets.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock

# The base names stay importable from here (EDM's module), where they lived first.
__all__ = ["BACKBONES", "DhariwalUNet", "EDMPrecond", "SkipTunableBackbone", "SkipTunablePrecond", "SongUNet",
           "one_hot_labels"]  # fmt: skip


def _check_common(img_resolution: int, channel_mult: Sequence[int], label_dim: int, augment_dim: int) -> None:
    """Reject configurations that EDM would only fail on later with a shape error."""
    check_resolution(img_resolution, channel_mult)
    if label_dim < 0 or augment_dim < 0:
        raise SkiptuneError(f"label_dim={label_dim}, augment_dim={augment_dim}: both must be >= 0")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SkiptuneError(f"{name}={value!r} is not supported; expected one of {', '.join(choices)}")


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

    def _coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return edm_coefficients(sigma, self.sigma_data)
