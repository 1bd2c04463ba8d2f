"""Keyframe segmentation networks: ESPNetv2 / ESPNet (published checkpoints), TorchScript and
ONNX files, run by torch, TorchScript or onnxruntime.

    model = load_model('espnetv2_s2.0')          # registry name, 'default', or a file path
    seg = model.segment(rgb)                     # probs (K,h,w) float32, labels (h,w) uint8
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from ..paths import WEIGHTS_DIR, shared_dir
from . import espnet as _espnet
from . import espnetv2 as _espnetv2
from .backends import (BACKENDS, NetworkModel, OrtRunner, TorchRunner, cache_dir, check_device,
                       export_onnx, make_torchscript, state_hash, synthetic_image)
from .base import KeyframeModel, Preprocessor, Segmentation, check_image, sanitize_segmentation
from .config import REGISTRY, ModelConfig, lookup, preset_for_file, registry_names, size_from_name

__all__ = ['KeyframeModel', 'NetworkModel', 'ModelConfig', 'Segmentation', 'load_model',
           'registry_names', 'REGISTRY', 'AUTO_BACKEND', 'BACKENDS', 'DEFAULT_FALLBACK',
           'check_image', 'sanitize_segmentation', 'Preprocessor', 'cache_dir', 'load_state_dict']

log = logging.getLogger(__name__)

# Backend used by backend='auto' on the CPU: the fastest backend whose outputs match the
# references (onnxruntime graphs are verified against torch within 1e-3 at export).
# Decided by `python -m vidseg_ros.core.models.backend_bench` (vidseg bench-backends) on the 2-core
# dev CPU, 1 thread, median of 7: ESPNetv2 s2.0 1024x512 torch 829 ms / torchscript 679 /
# onnxruntime 445; s2.0 512x256 153 / 203 / 106; s0.5 1024x512 838 / 1074 / 473; s0.5 512x256
# 281 / 191 / 115 ms. channels_last and no_grad vs inference_mode: within noise. On CUDA, 'auto'
# uses torch (cuDNN with TF32 off, so outputs stay exact).
AUTO_BACKEND = 'onnxruntime'
DEFAULT_FALLBACK = 'espnetv2_s2.0'
MODEL_EXTS = ('.pth', '.pt', '.ts', '.onnx')


# ---- resolving a spec to (config, model file) ---------------------------------------------
def _is_torchscript(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any('/code/' in n or n.endswith('constants.pkl') for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _sibling(path: Path, exts) -> Path | None:
    for ext in exts:
        cand = path.with_suffix(ext)
        if cand.is_file():
            return cand
    return None


def load_state_dict(path) -> dict:
    """Read a state dict (CPU), unwrapping {'state_dict': ...} and 'module.' prefixes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f'weights {path} not found')
    if _is_torchscript(path):
        raise ModelError(f'weights {path} is a TorchScript archive, not a state dict '
                         '(describe it with arch: torchscript in a yaml)')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for corrupt files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f'cannot read weights {path}: not a PyTorch checkpoint (expected a .pth/.pt state dict, '
                         f'a TorchScript or .onnx file, or a model .yaml; torch said {type(e).__name__}: '
                         f'{msg[:120]})') from None
    if isinstance(obj, dict):
        for k in ('state_dict', 'model_state_dict', 'model', 'net'):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f'weights {path} is not a state dict of tensors '
                         f'(got {type(obj).__name__})')
    if all(k.startswith('module.') for k in obj):
        obj = {k[len('module.'):]: v for k, v in obj.items()}
    return obj


def _infer_config(path: Path, state: dict) -> ModelConfig:
    preset = preset_for_file(path)
    v2 = _espnetv2.infer_config(state)
    v1 = _espnet.infer_config(state)
    if preset is not None and ((v2 and preset.arch == 'espnetv2')
                               or (v1 and preset.arch == 'espnet')):
        return preset
    size = size_from_name(path.stem)
    if v2:
        k = v2['num_outputs'] or 20
        return ModelConfig(name=path.stem, arch='espnetv2', width=v2['width'],
                           input_size=size or (1024, 512), num_outputs=k,
                           class_set='camvid' if k in (11, 12) else 'cityscapes')
    if v1:
        k = v1['num_outputs']
        camvid = k in (11, 12)
        base = REGISTRY['espnet_p2q8_camvid' if camvid else 'espnet_p2q8'][1]
        return base.replace(name=path.stem, p=v1['p'], q=v1['q'], variant=v1['variant'],
                            num_outputs=k, output_to_class=None,
                            input_size=size or base.input_size)
    raise ModelError(f'weights {path}: not a known architecture (no ESPNetv2 base_net.* or '
                     'ESPNet encoder.* keys); give a model config yaml')


def resolve(spec=None, weights=None) -> tuple:
    """(ModelConfig, model file Path, state dict or None) for a spec (see load_model)."""
    if isinstance(spec, ModelConfig):
        if weights is None and spec.weights is None:
            entry = lookup(spec.name)
            if entry is None:
                raise ModelError(f'model config {spec.name!r} has no weights')
            return spec.replace(), shared_dir() / 'models' / entry[0], None
        return spec.replace(), Path(weights or spec.weights), None
    if spec is None or spec == 'default':
        d_yaml, d_pt = WEIGHTS_DIR / 'default.yaml', WEIGHTS_DIR / 'default.pt'
        if d_yaml.is_file() and (weights or d_pt.is_file()):
            cfg = ModelConfig.from_yaml(d_yaml)
            w = Path(weights) if weights else (WEIGHTS_DIR / cfg.weights if cfg.weights else d_pt)
            return cfg, w, None
        log.warning('packaged default model (%s, %s) not found; falling back to %s from %s',
                    d_pt, d_yaml, DEFAULT_FALLBACK, shared_dir() / 'models')
        spec = DEFAULT_FALLBACK
    spec = str(spec)
    entry = lookup(spec)
    if entry is not None:
        rel, cfg = entry
        w = Path(weights) if weights else shared_dir() / 'models' / rel
        return cfg, w, None
    p = Path(spec).expanduser()
    ext = p.suffix.lower()
    if ext in ('.yaml', '.yml'):
        cfg = ModelConfig.from_yaml(p)
        if weights:
            w = Path(weights)
        elif cfg.weights:
            w = Path(cfg.weights).expanduser()
            w = w if w.is_absolute() else p.parent / w
        else:
            w = _sibling(p, MODEL_EXTS)
            if w is None:
                raise ModelError(f'model config {p}: no weights key and no model file beside it '
                                 f'({", ".join(p.stem + e for e in MODEL_EXTS)})')
        return cfg, w, None
    if ext in MODEL_EXTS or p.exists():
        if not p.is_file():
            raise ModelError(f'model file {p} not found')
        y = _sibling(p, ('.yaml', '.yml'))
        if y is not None:
            return ModelConfig.from_yaml(y), p, None
        if ext == '.onnx' or _is_torchscript(p):
            kind = 'ONNX' if ext == '.onnx' else 'TorchScript'
            raise ModelError(f'{kind} model {p} needs a model config: put {p.stem}.yaml beside it '
                             'or pass spec=<config.yaml>')
        state = load_state_dict(p)
        return _infer_config(p, state), p, state
    raise ModelError(f'unknown model {spec!r}: not a registry name ({", ".join(registry_names())}, '
                     'default) nor a model or config file')


# ---- building --------------------------------------------------------------------------------
def _build_net(cfg: ModelConfig) -> torch.nn.Module:
    if cfg.arch == 'espnetv2':
        return _espnetv2.ESPNetv2Seg(cfg.width, cfg.num_outputs)
    return _espnet.ESPNetSeg(cfg.num_outputs, cfg.p, cfg.q, cfg.variant)


def _short(keys, n=2) -> str:
    keys = list(keys)
    s = ', '.join(keys[:n])
    return f' ({s}{", ..." if len(keys) > n else ""})' if keys else ''


def _fit(net: torch.nn.Module, state: dict, path: Path, cfg: ModelConfig):
    """Load ``state`` strictly, or raise a one-line ModelError describing the mismatch."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f'missing {len(missing)} keys{_short(missing)}',
                 f'unexpected {len(unexpected)}{_short(unexpected)}']
        if shapes:
            k = shapes[0]
            parts.append(f'{len(shapes)} with other shapes ({k}: file {tuple(state[k].shape)} vs '
                         f'{tuple(expected[k].shape)})')
        mod = _espnetv2 if cfg.arch == 'espnetv2' else _espnet
        k_file = mod.num_outputs_of(state)
        if k_file is not None and k_file != cfg.num_outputs:
            parts.append(f'expected {cfg.num_outputs} outputs, file has {k_file}')
        raise ModelError(f'weights {path} do not fit {cfg.name} ({cfg.arch}): ' + '; '.join(parts))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f'weights {path} do not fit {cfg.name}: '
                         f'{str(e).splitlines()[0][:200]}') from None


def _check_backend(backend: str, allowed, what: str):
    if backend not in ('auto',) + tuple(allowed):
        raise ConfigError(f'backend {backend!r} cannot run {what} (use one of: auto, '
                          f'{", ".join(allowed)})')


def _dry_run(model: NetworkModel, path: Path):
    y = model.runner(model.preprocess(synthetic_image(model.input_size)))
    w, h = model.input_size
    if y.ndim != 4 or y.shape[1] != model.num_outputs:
        raise ModelError(f'model {path} returns shape {tuple(y.shape)}, config {model.name} '
                         f'expects (1, {model.num_outputs}, {h}, {w})')


def load_model(spec: str | None = None, weights: str | None = None, device: str = 'cpu',
               backend: str = 'auto', input_size: tuple | None = None,
               num_threads: int | None = None) -> KeyframeModel:
    """Load a keyframe network.

    spec: a ModelConfig, a registry name (``registry_names()``, e.g. 'espnetv2_s2.0', 'espnetv2_s0.5_512x256',
    'espnet_p2q8', 'espnet_p2q8_camvid'), 'default'/None (packaged weights/default.{pt,yaml},
    else espnetv2_s2.0 from shared with a warning), a model config yaml, or a model file
    (.pth state dict: architecture inferred; .pt/.ts TorchScript or .onnx with a sibling yaml).
    weights: overrides the model file. backend: 'auto' (AUTO_BACKEND on CPU, torch on CUDA),
    'torch', 'torchscript' or 'onnxruntime'. input_size: (W, H) overriding the config's.
    num_threads: onnxruntime intra-op threads (default: torch.get_num_threads()).
    """
    device = check_device(device)
    if backend not in ('auto',) + BACKENDS:
        raise ConfigError(f'unknown backend {backend!r} (use auto, {", ".join(BACKENDS)})')
    cfg, wpath, state = resolve(spec, weights)
    wpath = Path(wpath)
    cfg = cfg.replace(weights=str(wpath))   # so that load_model(model.config, ...) reloads it
    if input_size is not None:
        try:
            cfg = cfg.replace(input_size=tuple(int(v) for v in input_size))
        except (TypeError, ValueError):
            raise ConfigError(f'input_size must be (W, H), got {input_size!r}') from None
        except ModelError as e:
            raise ConfigError(f'input_size {tuple(input_size)}: {e}') from None
    if cfg.arch == 'torchscript':
        _check_backend(backend, ('torch', 'torchscript'), 'a TorchScript file')
        if not wpath.is_file():
            raise ModelError(f'TorchScript model {wpath} not found')
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', DeprecationWarning)
                mod = torch.jit.load(str(wpath), map_location=device).eval()
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f'cannot load TorchScript model {wpath}: {msg[:200]}') from None
        model = NetworkModel(cfg, TorchRunner(mod, device), 'torchscript', device, mod, wpath)
        _dry_run(model, wpath)
        return model
    if cfg.arch == 'onnx':
        _check_backend(backend, ('onnxruntime',), 'an ONNX file')
        if not wpath.is_file():
            raise ModelError(f'ONNX model {wpath} not found')
        runner = OrtRunner(wpath, device, num_threads, cfg.input_name, cfg.output_name)
        shp = runner.input_shape
        if len(shp) == 4 and all(isinstance(v, int) for v in shp[2:]) and \
                (shp[3], shp[2]) != tuple(cfg.input_size):
            raise ModelError(f'ONNX model {wpath} takes {shp[3]}x{shp[2]} input, config '
                             f'{cfg.name} says {cfg.input_size[0]}x{cfg.input_size[1]}')
        model = NetworkModel(cfg, runner, 'onnxruntime', device, None, wpath)
        _dry_run(model, wpath)
        return model

    # native ESPNetv2 / ESPNet
    if state is None:
        state = load_state_dict(wpath)
    net = _build_net(cfg)
    _fit(net, state, wpath, cfg)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    chosen = backend
    if backend == 'auto':
        chosen = AUTO_BACKEND if device == 'cpu' else 'torch'
    runner = None
    if chosen == 'onnxruntime':
        key = f'{cfg.arch}_{state_hash(net)[:16]}'
        try:
            path = export_onnx(net, Preprocessor(cfg), cfg.input_size, key, cfg.name)
            runner = OrtRunner(path, device, num_threads)
        except ModelError as e:
            if backend != 'auto':
                raise
            log.warning('%s; falling back to torch', e)
            chosen = 'torch'
    net = net.to(device)
    if chosen == 'torchscript':
        runner = TorchRunner(make_torchscript(net, cfg.input_size, device), device)
    elif chosen == 'torch':
        runner = TorchRunner(net, device)
    return NetworkModel(cfg, runner, chosen, device, net, wpath)
