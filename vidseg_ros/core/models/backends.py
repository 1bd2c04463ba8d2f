"""Inference backends: eager torch, TorchScript (traced + frozen) and onnxruntime (exported and
verified against torch, cached on disk)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from .base import KeyframeModel

log = logging.getLogger(__name__)

BACKENDS = ('torch', 'torchscript', 'onnxruntime')
ONNX_OPSET = 17
EXPORT_VERSION = 2  # bump when the exported graph changes (invalidates cached files)
EXPORT_TOL = 1e-3  # max |logit difference| an exported graph may have against eager torch


def cache_dir() -> Path:
    """$VIDSEG_CACHE, else ~/.cache/vidseg_ros."""
    env = os.environ.get('VIDSEG_CACHE')
    return Path(env) if env else Path.home() / '.cache' / 'vidseg_ros'


def check_device(device: str) -> str:
    device = str(device)
    if device not in ('cpu', 'cuda') and not device.startswith('cuda:'):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'device {device!r} requested but no CUDA device is available to torch')
    return device


def state_hash(net: torch.nn.Module) -> str:
    """sha256 over the state dict (names, shapes, values)."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def synthetic_image(size_wh, seed: int = 0) -> np.ndarray:
    """Deterministic smooth-plus-noise RGB image used to verify exported graphs."""
    w, h = size_wh
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200
    img = base + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---- runners: (1,3,h,w) float32 numpy -> (1,K,h,w) float32 CPU tensor -------------------
class TorchRunner:
    def __init__(self, module, device='cpu', channels_last=False):
        self.module = module
        self.device = torch.device(device)
        self.channels_last = channels_last

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        if self.device.type == 'cuda':
            # exact float32 convolutions (cuDNN would use TF32 by default: ~1e-3 relative error)
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                            allow_tf32=False):
                return self._run(x)
        return self._run(x)

    def _run(self, x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, non_blocking=True)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            y = self.module(t)
            if isinstance(y, (tuple, list)):
                y = y[0]
            elif isinstance(y, dict):
                y = next(iter(y.values()))
            return y.float().cpu().contiguous()


class OrtRunner:
    def __init__(self, path, device='cpu', num_threads=None, input_name=None, output_name=None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if str(device).startswith('cuda'):
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise ConfigError("device 'cuda' requested but onnxruntime has no "
                                  'CUDAExecutionProvider (install onnxruntime-gpu)')
            providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
        else:
            providers = ['CPUExecutionProvider']
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f'cannot load ONNX model {path}: {msg[:300]}') from None
        inputs = self.session.get_inputs()
        self.input_name = input_name or inputs[0].name
        self.output_name = output_name or self.session.get_outputs()[0].name
        self.input_shape = next((i.shape for i in inputs if i.name == self.input_name), None)
        if self.input_shape is None:
            raise ModelError(f'ONNX model {path} has no input named {self.input_name!r}')

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        if y.ndim == 3:
            y = y[None]
        return torch.from_numpy(np.ascontiguousarray(y, np.float32))

    def run(self, feeds: dict) -> list:
        """Every output (float32 numpy arrays, in the graph's order) for named inputs ``feeds``."""
        return [np.ascontiguousarray(y, np.float32) for y in self.session.run(None, feeds)]


# ---- the model class used by every backend -----------------------------------------------
class NetworkModel(KeyframeModel):
    """A keyframe network run by one backend. ``net`` is the torch module (None for ONNX files);
    for ESPNetv2 ``net.forward_low`` / ``net.forward_high`` give the split used by caching."""

    def __init__(self, config, runner, backend, device='cpu', net=None, weights=None):
        super().__init__(config)
        self.runner = runner
        self.backend = backend
        self.device = device
        self.net = net
        self.weights = weights

    def _infer(self, x: np.ndarray) -> torch.Tensor:
        y = self.runner(x)
        if y.ndim != 4 or y.shape[1] != self.num_outputs:
            raise ModelError(f'model {self.name} returned shape {tuple(y.shape)}, expected '
                             f'(1, {self.num_outputs}, h, w)')
        return y

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """Preprocessed input as a torch tensor on the model's device."""
        return torch.from_numpy(self.preprocess(rgb)).to(self.device)

    def features(self, rgb: np.ndarray) -> dict:
        """ESPNetv2: x, e1..e4 (encoder levels), d1..d4 (decoder), logits.
        ESPNet: o0, o0c, o1c, o2c, logits. Other networks: logits only."""
        net = self.net
        if net is None or isinstance(net, torch.jit.ScriptModule):
            return super().features(rgb)
        with torch.inference_mode():
            x = self.to_tensor(rgb)
            if hasattr(net, 'forward_low'):
                low = net.forward_low(x)
                logits, maps = net.forward_high(low, return_features=True)
                return {'x': x, **maps, 'logits': logits}
            if hasattr(net, 'forward_features'):
                return net.forward_features(x)
            return {'logits': net(x)}


def make_torchscript(net: torch.nn.Module, size_wh, device='cpu'):
    """Trace + freeze ``net`` for a fixed input size."""
    w, h = size_wh
    x = torch.zeros(1, 3, h, w, device=device)
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(net, x, check_trace=False)
        return torch.jit.freeze(traced.eval())


def export_onnx(net: torch.nn.Module, preprocess, size_wh, key: str, name: str) -> Path:
    """ONNX file for ``net`` at ``size_wh`` (cached by ``key``), verified against eager torch
    within EXPORT_TOL on a test image; raises ModelError when it does not match.
    ``net`` must be on the CPU."""
    w, h = size_wh
    return export_onnx_module(net, {'input': torch.from_numpy(preprocess(synthetic_image(size_wh)))}, ['logits'],
                              f'{key}_{w}x{h}', name)


def export_onnx_module(module: torch.nn.Module, example: dict, output_names, key: str, name: str) -> Path:
    """ONNX file of ``module(*example.values())`` (inputs named by ``example``'s keys, outputs by
    ``output_names``; fixed shapes), cached on disk by ``key``, verified against eager torch on ``example``
    within EXPORT_TOL on every output; ModelError when it does not match or the export fails."""
    d = cache_dir() / 'onnx'
    path = d / f'{key}_op{ONNX_OPSET}_v{EXPORT_VERSION}.onnx'
    meta_path = path.with_suffix('.json')
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get('verified') and meta.get('torch') == torch.__version__:
                return path
        except (OSError, ValueError):
            pass
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.onnx', dir=d)
    os.close(fd)
    args = tuple(example.values())
    try:
        import warnings
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(module.eval(), args, tmp, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=list(example), output_names=list(output_names),
                              do_constant_folding=True)
            ref = module(*args)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = OrtRunner(tmp, num_threads=torch.get_num_threads()).run(
            {k: v.detach().cpu().numpy() for k, v in example.items()})
        diff = max(float(np.abs(r.detach().cpu().numpy() - g).max()) for r, g in zip(refs, got))
        if not diff <= EXPORT_TOL:
            raise ModelError(f'ONNX export of {name} differs from torch by {diff:.3g} '
                             f'(> {EXPORT_TOL}); use backend torch')
        os.replace(tmp, path)
        meta_path.write_text(json.dumps({'name': name, 'inputs': {k: list(v.shape) for k, v in example.items()},
                                         'outputs': list(output_names), 'max_abs_diff': diff,
                                         'verified': True, 'torch': torch.__version__, 'opset': ONNX_OPSET}))
        log.info('exported %s to %s (max |diff| vs torch %.2e)', name, path, diff)
        return path
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter failures vary
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f'ONNX export of {name} failed: {msg[:300]}') from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
