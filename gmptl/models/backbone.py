"""The self-supervised speech encoder: presets with random weights, or `from_pretrained`.

Layer convention (docs/method.md): layer L is 1-based and means the output of the
L-th transformer layer, which is transformers' ``hidden_states[L]``;
``hidden_states[0]`` is the input to the first layer. For stable-layer-norm
encoders (HuBERT large), transformers applies the final layer norm to the last
entry, so ``hidden_states[depth]`` is the normalised output of the last layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    HubertConfig,
    HubertModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from gmptl.config import PRESETS, ModelConfig
from gmptl.errors import ConfigError
from gmptl.paths import backbone_folder

# The backbone's input scaling, kept in its own config (so a saved folder carries it): see normalize_input.
INPUT_NORM_ATTR = "gmptl_input_norm"

_FAMILIES = {
    "hubert": (HubertConfig, HubertModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "wavlm": (WavLMConfig, WavLMModel),
}


def preset_config(name: str, architecture: str = "hubert") -> PretrainedConfig:
    """The config of a named preset: `tiny` (CPU tests/demo), `base`, `large` (HuBERT base/large shapes)."""
    config_cls, _ = _FAMILIES[architecture]
    if name == "tiny":
        # Small enough for a 2-core CPU; layer-norm CNN so padded batches equal one-by-one runs.
        return config_cls(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16,
            feat_extract_norm="layer", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, layerdrop=0.0,
        )  # fmt: skip
    if name == "mini":
        # The 2-layer model the demo pre-trains: a group-norm CNN (the library default, as HuBERT base) keeps
        # each utterance's loudness contour, which the per-frame layer norm of `tiny` removes; peak-normalised
        # input makes it independent of the recording level.
        config = config_cls(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16,
            feat_extract_norm="group", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, layerdrop=0.0,
        )  # fmt: skip
        setattr(config, INPUT_NORM_ATTR, "peak")
        return config
    if name == "base":
        return config_cls()  # the library defaults are the base shapes (768 x 12, group-norm CNN)
    if name == "large":
        return config_cls(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        )  # fmt: skip
    raise ConfigError(f"model.backbone: unknown preset {name!r}; presets are {list(PRESETS)}")


def build_backbone(cfg: ModelConfig) -> PreTrainedModel:
    """A preset with random weights, or pretrained weights from a hub id or local folder."""
    if cfg.backbone in PRESETS:
        config = preset_config(cfg.backbone, cfg.architecture)
        # Seeded so every Ray worker that builds the preset holds identical weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = _FAMILIES[cfg.architecture][1](config)
    else:
        model = load_pretrained(cfg.backbone, offline=cfg.offline)
    if cfg.input_norm != "auto":
        setattr(model.config, INPUT_NORM_ATTR, cfg.input_norm)  # saved with the model from here on
    return model


def _declared_norm(folder: Path) -> str | None:
    """A hub checkpoint's input scaling, from its ``preprocessor_config.json`` (do_normalize: std)."""
    meta = folder / "preprocessor_config.json"
    try:
        return "std" if json.loads(meta.read_text()).get("do_normalize") else None
    except (OSError, ValueError, AttributeError):
        return None


def input_norm(config: PretrainedConfig) -> str:
    """How the backbone scales its input waveform: ``none``, ``peak`` or ``std``."""
    return getattr(config, INPUT_NORM_ATTR, "none") or "none"


def normalize_input(wave: torch.Tensor, n_samples: torch.Tensor, mode: str) -> torch.Tensor:
    """Scale each row of a zero-padded batch (B, T) over its ``n_samples`` valid samples; padding stays 0.

    Applied inside every forward (training, evaluation, extraction, prediction), so a backbone sees its
    input scaled one way wherever it runs. ``peak``: max |x| = 1; ``std``: zero mean, unit variance.
    """
    if mode == "none":
        return wave
    valid = torch.arange(wave.shape[1], device=wave.device)[None, :] < n_samples.to(wave.device)[:, None]
    if mode == "peak":
        peak = wave.abs().masked_fill(~valid, 0).amax(dim=1, keepdim=True)
        return wave / peak.clamp_min(1e-8)
    if mode == "std":
        n = valid.sum(dim=1, keepdim=True).clamp_min(1)
        mean = wave.masked_fill(~valid, 0).sum(dim=1, keepdim=True) / n
        var = ((wave - mean).masked_fill(~valid, 0) ** 2).sum(dim=1, keepdim=True) / n
        return ((wave - mean) / torch.sqrt(var + 1e-7)).masked_fill(~valid, 0)
    raise ValueError(f"input normalisation {mode!r}: expected none, peak or std")


def load_pretrained(name_or_path: str, offline: bool = True) -> PreTrainedModel:
    """`AutoModel.from_pretrained`, with an error that says how to provide missing weights."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load, on the driver's terminal
    name_or_path = backbone_folder(name_or_path)
    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(
            f"model.backbone={name_or_path}: the folder has no config.json; it must be written by "
            f"`save_pretrained` (or `huggingface-cli download <id> --local-dir {name_or_path}`)"
        )
    try:
        config = AutoConfig.from_pretrained(
            str(local) if local.exists() else name_or_path, local_files_only=offline
        )
        if local.exists() and not hasattr(config, INPUT_NORM_ATTR) and (norm := _declared_norm(local)):
            setattr(config, INPUT_NORM_ATTR, norm)
        return AutoModel.from_pretrained(
            str(local) if local.exists() else name_or_path, config=config, local_files_only=offline
        )
    except OSError as e:
        how = (
            "this machine is offline (model.offline=true): download the weights where the hub is reachable, "
            f"e.g. `huggingface-cli download {name_or_path} --local-dir /models/{Path(name_or_path).name}`, "
            "copy the folder here and set model.backbone to it"
        )
        raise ConfigError(
            f"model.backbone={name_or_path!r} could not be loaded ({e.__class__.__name__}); {how}"
        ) from None


def depth(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)


def check_layers(model: PreTrainedModel, layers: list[int]) -> None:
    d = depth(model)
    bad = [layer for layer in layers if not 1 <= layer <= d]
    if bad:
        raise ConfigError(
            f"features.layers: {bad} are outside 1..{d}, the transformer layers of this backbone"
        )


def truncate_to(model: PreTrainedModel, deepest: int) -> int:
    """Drop the transformer layers that ``hidden_states[1..deepest]`` do not need, in place.

    Feature extraction keeps layer 10 of 12 by default (docs/method.md): running layers 11-12 is
    pure waste. Stable-layer-norm encoders (HuBERT large) apply the final layer norm to the
    *last* hidden state, so they keep one layer more and ``hidden_states[deepest]`` stays the
    raw output it is in the whole model. Returns the number of layers kept.
    """
    d = depth(model)
    if not 1 <= deepest <= d:
        raise ConfigError(f"features.layers: layer {deepest} is outside 1..{d}, the transformer layers")
    stable = bool(getattr(model.config, "do_stable_layer_norm", False))
    keep = min(d, deepest + 1) if stable and deepest < d else deepest
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return d  # an encoder of another shape: run it whole
    if keep > len(layers):
        raise ValueError(f"the encoder was already cut to {len(layers)} layers; layer {deepest} needs {keep}")
    model.encoder.layers = layers[:keep]
    return keep


def n_frames(model: PreTrainedModel, n_samples: int | torch.Tensor) -> torch.Tensor:
    """Output frames of the CNN front-end for an input of ``n_samples`` (25 ms window, 20 ms hop)."""
    return model._get_feat_extract_output_lengths(torch.as_tensor(n_samples))


def uses_attention_mask(model: PreTrainedModel) -> bool:
    """Group-norm CNNs (HuBERT/wav2vec2 base) were trained without one: transformers advises zero-padding only."""
    return model.config.feat_extract_norm == "layer"


def check_sample_rate(cfg: ModelConfig, sample_rate_hz: int) -> None:
    """A saved model folder that records its audio rate (``preprocessor_config.json``) must match
    ``data.sample_rate_hz`` (presets are checked when the config loads)."""
    if cfg.backbone in PRESETS:
        return
    folder = Path(cfg.backbone).expanduser()
    meta, key = folder / "preprocessor_config.json", "sampling_rate"
    if (folder / "model.json").is_file():
        meta, key = folder / "model.json", "sample_rate_hz"  # a gmptl model folder
    if not meta.is_file():
        return
    try:
        rate = json.loads(meta.read_text()).get(key)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.backbone={cfg.backbone}: {meta.name} is unreadable ({e})") from None
    if rate is not None and int(rate) != sample_rate_hz:
        raise ConfigError(
            f"data.sample_rate_hz={sample_rate_hz}, but model.backbone={cfg.backbone} was trained on {rate} Hz "
            f"audio ({meta}); set data.sample_rate_hz={rate}"
        )


def backbone_config(cfg: ModelConfig, init_dir: str | Path | None = None) -> PretrainedConfig:
    """The backbone's config without building its weights (frame geometry, depth)."""
    if init_dir is not None:
        return AutoConfig.from_pretrained(str(Path(init_dir)), local_files_only=True)
    if cfg.backbone in PRESETS:
        return preset_config(cfg.backbone, cfg.architecture)
    try:
        return AutoConfig.from_pretrained(backbone_folder(cfg.backbone), local_files_only=cfg.offline)
    except OSError:
        load_pretrained(cfg.backbone, cfg.offline)  # raises the explanatory ConfigError
        raise


class FrameGeometry(NamedTuple):
    """Where the CNN front-end's frames sit, in samples: the one frame geometry of gmptl."""

    hop: int  # samples between frames (320 for HuBERT: 20 ms at 16 kHz)
    receptive_field: int  # samples one frame sees (400: 25 ms)

    def n_frames(self, n_samples: int) -> int:
        """Frames the front-end makes of ``n_samples`` samples (0 when shorter than one receptive field)."""
        return 0 if n_samples < self.receptive_field else (n_samples - self.receptive_field) // self.hop + 1


def frame_geometry(config: PretrainedConfig) -> FrameGeometry:
    """(hop, receptive field) in samples of the CNN front-end: (320, 400) for HuBERT at 16 kHz."""
    hop, rf = 1, 1
    for k, s in zip(reversed(config.conv_kernel), reversed(config.conv_stride), strict=True):
        rf = (rf - 1) * s + k
    for s in config.conv_stride:
        hop *= s
    return FrameGeometry(hop, rf)
