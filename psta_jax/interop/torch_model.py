"""A PyTorch port of the release's PSTA network and loss (the speed baseline and a cross-check).

This is the network of the authors' PyTorch release (docs/release_network.md; comments
cite its sections), written from that description: a
ResNet-50 with last stride 1 (`base.`), `down_channel` (1x1 conv 2048 -> 1024, BN, ReLU),
three STAM stages (`layer1.` .. `layer3.`: 8 maps -> 4 -> 2 -> 1), per-stage BN necks
(`bottleneck.k`, bias frozen at 0) and classifiers (`classifier.k`). Module and parameter
names give exactly the release's state_dict (`tests/reference/psta_official_layout.json`),
so a release checkpoint loads with `load_state_dict(..., strict=True)` (strip the
`module.` prefix that nn.DataParallel adds).

It exists for two reasons: `benchmarks/model_throughput.py` times it beside our JAX model
as the release's speed in the same run, and the tests check it against the outputs the
release itself produced (tests/interop/test_torch_model.py), which makes it a second,
independent implementation of the same network.

Shapes (PyTorch layout, NCHW), with B clips of T frames:

    model = release_model(num_classes=625)
    model.eval();  emb = model(clips)   # clips (B, T, 3, H, W) float -> (B, 1024) = BN(x_3)
    model.train(); out = model(clips)   # ReleaseOutput(logits=3 x (B, num_classes),
                                        #               features=3 x (B, 1024))
    total, parts = release_loss(out, labels)   # labels (B,) int64

BatchNorm in train mode is called as the release calls it (each call normalises with its
own batch statistics and moves the running statistics once): the backbone, `down_channel`,
`Embeding`, the frame-wise TRA/SRA layers and `conv_block` once per stage on all frames
(or pairs); TRA's pairwise layers (`gg_temporal`, `tte_para`, `te_para`) once per pair and
direction, pair by pair, the first frame's spatial weight before the second's.

torch is an optional dependency of psta_jax: only this module imports it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PSTARelease", "ReleaseOutput", "release_loss", "release_model"]

NUM_STAGES = 3


class ReleaseOutput(NamedTuple):
    """Train-mode outputs, one entry per stage: logits (B, num_classes) and BN-neck
    features (B, feature_dim)."""

    logits: tuple[torch.Tensor, ...]
    features: tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------- backbone (1)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet-50 (blocks 3, 4, 6, 3) without pooling and fc, `layer4` with `last_stride`;
    torchvision's key names. (N, 3, H, W) -> (N, 32 * width, H / 16, W / 16) at stride 1."""

    def __init__(
        self, width: int = 64, last_stride: int = 1, blocks: tuple[int, ...] = (3, 4, 6, 3)
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = width
        strides = (1, 2, 2, last_stride)
        for index, (count, stride) in enumerate(zip(blocks, strides, strict=True)):
            layer_width = width * 2**index
            layer = []
            for block in range(count):
                layer.append(Bottleneck(in_channels, layer_width, stride if block == 0 else 1))
                in_channels = layer_width * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.out_channels = in_channels
        self.stride = 4 * 2 * 2 * last_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ----------------------------------------------------------------------------- STAM (3-5)


def conv_bn(
    in_channels: int, out_channels: int, activation: nn.Module, kernel_size: int = 1
) -> list[nn.Module]:
    """[bias-free conv, BatchNorm2d, activation] (entries .0, .1, .2 of a Sequential)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        activation,
    ]


def relation_maps(
    query: torch.Tensor, key: torch.Tensor, spatial: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(in(R), out(R)) of R[p, q] = <query[:, p], key[:, q]>, each (N, HW, H, W).

    query, key: (N, C', HW). in(R) has channel q at position p (value R[p, q]); out(R)
    has channel p at position q (value R[p, q]), as section 4 defines them.
    """
    relations = torch.bmm(query.transpose(1, 2), key)  # (N, HW_p, HW_q)
    n, hw = relations.shape[:2]
    rel_in = relations.transpose(1, 2).reshape(n, hw, *spatial)
    rel_out = relations.reshape(n, hw, *spatial)
    return rel_in, rel_out


class TRA(nn.Module):
    """Temporal Reference Attention (section 4); state_dict prefix `TRAG.`."""

    def __init__(self, channels: int, spatial: tuple[int, int]):
        super().__init__()
        c8 = channels // 8
        hw = spatial[0] * spatial[1]
        self.spatial = tuple(spatial)
        self.gamma_temporal = nn.Sequential(*conv_bn(channels, c8, nn.ReLU()))
        self.beta_temporal = nn.Sequential(*conv_bn(channels, c8, nn.ReLU()))
        self.gg_temporal = nn.Sequential(*conv_bn(2 * hw, c8, nn.ReLU()))
        self.tte_para = nn.Sequential(*conv_bn(2 * c8, c8, nn.ReLU()))
        self.te_para = nn.Sequential(*conv_bn(2 * c8, 1, nn.Sigmoid()))
        self.theta_channel = nn.Sequential(nn.Conv1d(channels, c8, 1, bias=False), nn.ReLU())
        self.channel_para = nn.Sequential(
            nn.Linear(2 * c8, c8), nn.ReLU(), nn.Linear(c8, channels), nn.Sigmoid()
        )

    def forward(
        self, frames: torch.Tensor, embedded: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """frames (B, T, C, H, W), embeddings (B, T, C/8, H, W), spatial means (B, T, C)
        -> one map per pair (B, T/2, C, H, W)."""
        batch, seq_len, channels, height, width = frames.shape
        flat = frames.reshape(batch * seq_len, channels, height, width)
        g = self.gamma_temporal(flat).reshape(batch, seq_len, -1, height * width)
        b = self.beta_temporal(flat).reshape(batch, seq_len, -1, height * width)
        theta = self.theta_channel(means.transpose(1, 2)).transpose(1, 2)  # (B, T, C/8)
        outputs = []
        for i in range(0, seq_len, 2):
            j = i + 1
            c_ij = self.channel_para(torch.cat([theta[:, i], theta[:, j]], dim=1))
            c_ji = self.channel_para(torch.cat([theta[:, j], theta[:, i]], dim=1))
            in_ij, out_ij = relation_maps(g[:, i], b[:, j], self.spatial)
            in_ji, out_ji = relation_maps(g[:, j], b[:, i], self.spatial)
            # One call per direction, the first frame's (s_i) before the second's (s_j).
            s_i = self._spatial_weight(embedded[:, i], embedded[:, j], in_ij, out_ji)
            s_j = self._spatial_weight(embedded[:, j], embedded[:, i], in_ji, out_ij)
            fused = (
                c_ij[:, :, None, None] * s_i * frames[:, i]
                + c_ji[:, :, None, None] * s_j * frames[:, j]
            )
            outputs.append(torch.square(F.relu(fused)))  # the release squares it
        return torch.stack(outputs, dim=1)

    def _spatial_weight(
        self, own: torch.Tensor, other: torch.Tensor, rel_in: torch.Tensor, rel_out: torch.Tensor
    ) -> torch.Tensor:
        appearance = self.tte_para(torch.cat([own, other], dim=1))
        relation = self.gg_temporal(torch.cat([rel_in, rel_out], dim=1))
        return self.te_para(torch.cat([appearance, relation], dim=1))  # (B, 1, H, W)


class SRA(nn.Module):
    """Spatial Reference Attention (section 5); state_dict prefix `SRAG.`."""

    def __init__(self, channels: int, spatial: tuple[int, int]):
        super().__init__()
        c8 = channels // 8
        hw = spatial[0] * spatial[1]
        self.spatial = tuple(spatial)
        self.alphi_appearance = nn.Sequential(*conv_bn(channels, c8, nn.ReLU()))
        self.delta_appearance = nn.Sequential(*conv_bn(channels, c8, nn.ReLU()))
        self.gg_spatial = nn.Sequential(*conv_bn(2 * hw, c8, nn.ReLU()))
        self.spa_para = nn.Sequential(
            *conv_bn(2 * c8, c8, nn.ReLU()), *conv_bn(c8, 1, nn.Sigmoid())
        )
        self.app_channel = nn.Sequential(
            nn.Linear(channels, c8), nn.ReLU(), nn.Linear(c8, channels), nn.Sigmoid()
        )

    def forward(
        self, frames: torch.Tensor, embedded: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """frames (B, T, C, H, W), embeddings (B, T, C/8, H, W), spatial means (B, T, C)
        -> one map per pair (B, T/2, C, H, W)."""
        batch, seq_len, channels, height, width = frames.shape
        flat = frames.reshape(batch * seq_len, channels, height, width)
        a = self.alphi_appearance(flat).flatten(2)
        d = self.delta_appearance(flat).flatten(2)
        rel_in, rel_out = relation_maps(a, d, self.spatial)
        relation = self.gg_spatial(torch.cat([rel_in, rel_out], dim=1))
        spatial_weight = self.spa_para(torch.cat([embedded.flatten(0, 1), relation], dim=1))
        spatial_weight = spatial_weight.reshape(batch, seq_len, 1, height, width)
        channel_weight = self.app_channel(means)[..., None, None]  # (B, T, C, 1, 1)
        weighted = channel_weight * spatial_weight * frames
        return F.relu(weighted[:, 0::2] + weighted[:, 1::2])


class STAM(nn.Module):
    """Spatial-Temporal Aggregation Module (section 3): (B, T, C, H, W) -> (B, T/2, C, H, W),
    frames paired (0, 1), (2, 3), ...; no identity shortcut around `conv_block`."""

    def __init__(self, channels: int, spatial: tuple[int, int]):
        super().__init__()
        mid, c8 = channels // 4, channels // 8
        self.Embeding = nn.Sequential(
            *conv_bn(channels, mid, nn.ReLU()),  # noqa: N815
            *conv_bn(mid, c8, nn.ReLU()),
        )
        self.TRAG = TRA(channels, spatial)
        self.SRAG = SRA(channels, spatial)
        self.conv_block = nn.Sequential(
            *conv_bn(channels, mid, nn.ReLU()),
            *conv_bn(mid, mid, nn.ReLU(), kernel_size=3),
            *conv_bn(mid, channels, nn.ReLU()),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, seq_len, channels, height, width = frames.shape
        if seq_len % 2:
            raise ValueError(f"STAM pairs frames: T must be even, got T={seq_len}")
        means = frames.mean(dim=(-2, -1))
        embedded = self.Embeding(frames.reshape(batch * seq_len, channels, height, width))
        embedded = embedded.reshape(batch, seq_len, -1, height, width)
        fused = self.TRAG(frames, embedded, means) + self.SRAG(frames, embedded, means)
        out = self.conv_block(fused.flatten(0, 1))
        return out.reshape(batch, seq_len // 2, channels, height, width)


# ----------------------------------------------------------------------------- network (6)


class PSTARelease(nn.Module):
    """The release's PSTA; see the module docstring.

    Args:
      num_classes: training identities.
      feature_dim: C of `down_channel` and the STAMs (1024 in the release).
      image_size: (H, W) of the frames; the relation layers take 2HW channels (the release
        hard-codes 256 = 2 x 16 x 8, i.e. 256x128 frames).
      seq_len: T; the three stages need T = 8 (or a larger power of two).
      backbone_width: ResNet-50's base width (64 in the release; smaller only for tests).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int = 1024,
        image_size: tuple[int, int] = (256, 128),
        seq_len: int = 8,
        backbone_width: int = 64,
    ):
        super().__init__()
        if seq_len < 2**NUM_STAGES or seq_len & (seq_len - 1):
            raise ValueError(f"seq_len must be a power of two >= {2**NUM_STAGES}, got {seq_len}")
        if feature_dim % 8:
            raise ValueError(f"feature_dim must be a multiple of 8, got {feature_dim}")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.image_size = tuple(image_size)
        self.seq_len = seq_len
        self.base = ResNetBackbone(backbone_width, last_stride=1)
        stride = self.base.stride
        if image_size[0] % stride or image_size[1] % stride:
            raise ValueError(f"image_size {tuple(image_size)} must be divisible by {stride}")
        self.map_size = (image_size[0] // stride, image_size[1] // stride)
        self.down_channel = nn.Sequential(*conv_bn(self.base.out_channels, feature_dim, nn.ReLU()))
        for stage in range(NUM_STAGES):
            setattr(self, f"layer{stage + 1}", STAM(feature_dim, self.map_size))
        self.bottleneck = nn.ModuleList(nn.BatchNorm1d(feature_dim) for _ in range(NUM_STAGES))
        for neck in self.bottleneck:
            neck.bias.requires_grad_(False)
        self.classifier = nn.ModuleList(
            nn.Linear(feature_dim, num_classes) for _ in range(NUM_STAGES)
        )
        self.reset_parameters()

    @property
    def stages(self) -> list[STAM]:
        return [getattr(self, f"layer{stage + 1}") for stage in range(NUM_STAGES)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Section 8's initialisation. The backbone gets torchvision's ResNet init (the
        release loads torchvision's ImageNet weights into it instead)."""
        for module in self.base.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for stage in self.stages:
            for module in stage.modules():
                if isinstance(module, nn.Conv2d | nn.Conv1d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in")
                elif isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out")
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        # down_channel keeps PyTorch's default init.
        for neck in self.bottleneck:
            nn.init.ones_(neck.weight)
            nn.init.zeros_(neck.bias)
        for head in self.classifier:
            nn.init.normal_(head.weight, std=0.001)
            nn.init.zeros_(head.bias)

    def frame_maps(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clips (B, T, 3, H, W) -> (backbone maps (B*T, 2048, h, w), down_channel maps
        (B, T, C, h, w))."""
        self._check_clips(clips)
        batch, seq_len = clips.shape[:2]
        base = self.base(clips.flatten(0, 1))
        maps = self.down_channel(base)
        return base, maps.reshape(batch, seq_len, *maps.shape[1:])

    def stage_maps(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """down_channel maps (B, T, C, h, w) -> each stage's output (B, T / 2^n, C, h, w)."""
        outputs = []
        for stage in self.stages:
            maps = stage(maps)
            outputs.append(maps)
        return outputs

    @staticmethod
    def clip_features(
        stage_maps: list[torch.Tensor],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(stage features f_n, cumulative features x_n = mean(f_1..f_n)), each (B, C)."""
        stage_features = [maps.mean(dim=(1, 3, 4)) for maps in stage_maps]
        cumulative = [sum(stage_features[: n + 1]) / (n + 1) for n in range(len(stage_maps))]
        return stage_features, cumulative

    def heads(self, cumulative: list[torch.Tensor]) -> torch.Tensor | ReleaseOutput:
        """Eval mode: the embedding BN(x_3) (B, C); train mode: ReleaseOutput."""
        if not self.training:
            return self.bottleneck[-1](cumulative[-1])
        features = tuple(neck(x) for neck, x in zip(self.bottleneck, cumulative, strict=True))
        logits = tuple(head(f) for head, f in zip(self.classifier, features, strict=True))
        return ReleaseOutput(logits=logits, features=features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor | ReleaseOutput:
        _, maps = self.frame_maps(clips)
        return self.heads(self.clip_features(self.stage_maps(maps))[1])

    def _check_clips(self, clips: torch.Tensor) -> None:
        if clips.ndim != 5 or clips.shape[2] != 3:
            raise ValueError(f"expected clips (B, T, 3, H, W), got {tuple(clips.shape)}")
        if tuple(clips.shape[3:]) != self.image_size:
            raise ValueError(f"built for {self.image_size} frames, got {tuple(clips.shape[3:])}")
        seq_len = clips.shape[1]
        if seq_len < 2**NUM_STAGES or seq_len & (seq_len - 1):
            raise ValueError(f"T must be a power of two >= {2**NUM_STAGES}, got T={seq_len}")


def release_model(
    num_classes: int,
    feature_dim: int = 1024,
    image_size: tuple[int, int] = (256, 128),
    seq_len: int = 8,
    backbone_width: int = 64,
) -> PSTARelease:
    """The release's `PSTA(num_classes, seq_len)` (defaults) with section 8's init."""
    return PSTARelease(
        num_classes,
        feature_dim=feature_dim,
        image_size=image_size,
        seq_len=seq_len,
        backbone_width=backbone_width,
    )


# ----------------------------------------------------------------------------- loss (7)


def cross_entropy_label_smooth(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1
) -> torch.Tensor:
    """Cross-entropy against (1 - eps) * onehot + eps / num_classes, batch mean."""
    log_probs = F.log_softmax(logits, dim=1)
    targets = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1.0)
    targets = (1.0 - epsilon) * targets + epsilon / logits.shape[1]
    return (-targets * log_probs).mean(0).sum()


def batch_hard_triplet(
    features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """Batch-hard triplet, distance = -cosine similarity: mean(relu(d_ap - d_an + margin)),
    hardest positive over the anchor's label (itself included), hardest negative over the
    others."""
    x = F.normalize(features, dim=1)
    dist = -(x @ x.t())
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, -math.inf).amax(dim=1)
    hardest_negative = dist.masked_fill(same, math.inf).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def release_loss(
    outputs: ReleaseOutput,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.1,
    margin: float = 0.3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The release's Train.py loss: mean_k CE_ls(logits_k) + mean_k Triplet(features_k).

    Returns (total, {'ce': mean CE, 'triplet': mean triplet}), scalars.
    """
    ce = torch.stack(
        [cross_entropy_label_smooth(logits, labels, label_smoothing) for logits in outputs.logits]
    ).mean()
    triplet = torch.stack(
        [batch_hard_triplet(features, labels, margin) for features in outputs.features]
    ).mean()
    return ce + triplet, {"ce": ce, "triplet": triplet}
