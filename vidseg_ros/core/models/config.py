"""Model configuration (yaml-loadable) and the registry of published checkpoints."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

ARCHS = ('espnetv2', 'espnet', 'torchscript', 'onnx')

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ESPNet v1 statistics, B, G, R order on the 0-255 scale (see espnet/ARCHITECTURE.md section 6).
ESPNET_CITY_MEAN = (72.3923111, 82.90893555, 73.15840149)
ESPNET_CITY_STD = (45.3192215, 46.15289307, 44.91483307)
ESPNET_CAMVID_MEAN = (110.3, 108.4, 105.0)
ESPNET_CAMVID_STD = (72.1, 72.7, 69.9)


@dataclass
class ModelConfig:
    """How to build a keyframe network and prepare its input.

    Preprocessing: take the RGB uint8 image, reorder to ``channel_order``; then either
    resize (uint8, INTER_LINEAR) and normalise, or (``normalise_before_resize``) normalise the
    full image in float32 and resize that. Normalising is ``(v / scale - mean) / std`` when
    ``scale_before_normalise`` else ``((v - mean) / std) / scale``; ``mean``/``std`` are in
    ``channel_order`` and in the units of that step.
    """

    name: str
    arch: str                                  # espnetv2 | espnet | torchscript | onnx
    input_size: tuple = (1024, 512)            # network input (W, H)
    width: float | None = None                 # ESPNetv2 scale s
    p: int | None = None                       # ESPNet depth multipliers
    q: int | None = None
    variant: str = 'test'                      # ESPNet decoder: 'test' (Cityscapes) | 'train' (CamVid)
    channel_order: str = 'RGB'
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    scale: float = 255.0
    scale_before_normalise: bool = True
    normalise_before_resize: bool = False
    class_set: str = 'cityscapes'
    num_outputs: int = 20
    output_to_class: tuple | None = None       # channel -> class id; default: i < K -> i, else 255
    weights: str | None = None                 # model file (relative to the yaml's folder)
    input_name: str | None = None              # ONNX input/output names (default: the first)
    output_name: str | None = None
    info: dict | None = None                   # free-form metadata (training run, scores, ...)

    def __post_init__(self):
        self.validate()

    # -- validation / conversion --
    def validate(self):
        def bad(msg):
            raise ModelError(f'model config {self.name!r}: {msg}')
        if self.arch not in ARCHS:
            bad(f'arch must be one of {", ".join(ARCHS)}, got {self.arch!r}')
        try:
            self.input_size = tuple(int(v) for v in self.input_size)
            self.mean = tuple(float(v) for v in self.mean)
            self.std = tuple(float(v) for v in self.std)
            self.num_outputs = int(self.num_outputs)
            self.scale = float(self.scale)
        except (TypeError, ValueError) as e:
            bad(f'bad numeric field ({e})')
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            bad(f'input_size must be (W, H) >= 8, got {self.input_size}')
        mult = {'espnetv2': 16, 'espnet': 8}.get(self.arch)
        if mult and (self.input_size[0] % mult or self.input_size[1] % mult):
            bad(f'{self.arch} needs input_size multiples of {mult}, got {self.input_size}')
        if self.channel_order not in ('RGB', 'BGR'):
            bad(f'channel_order must be RGB or BGR, got {self.channel_order!r}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(abs(s) for s in self.std) == 0:
            bad('mean and std need 3 values (std non-zero)')
        if self.scale <= 0:
            bad(f'scale must be > 0, got {self.scale}')
        if self.arch == 'espnetv2' and self.width not in (0.5, 1.0, 1.5, 2.0):
            bad(f'espnetv2 width must be one of 0.5, 1.0, 1.5, 2.0, got {self.width}')
        if self.arch == 'espnet':
            if not self.p or not self.q:
                bad('espnet needs p and q')
            if self.variant not in ('test', 'train'):
                bad(f"espnet variant must be 'test' or 'train', got {self.variant!r}")
        from ..classes import CLASS_SETS
        if str(self.class_set).lower() not in CLASS_SETS:
            bad(f'unknown class_set {self.class_set!r} (known: {", ".join(CLASS_SETS)})')
        self.class_set = str(self.class_set).lower()
        k = CLASS_SETS[self.class_set].num_classes
        if self.output_to_class is None:
            self.output_to_class = tuple(i if i < k else 255 for i in range(self.num_outputs))
        self.output_to_class = tuple(int(v) for v in self.output_to_class)
        if len(self.output_to_class) != self.num_outputs:
            bad(f'output_to_class has {len(self.output_to_class)} entries, num_outputs is '
                f'{self.num_outputs}')
        if any(not (0 <= v < k or v == 255) for v in self.output_to_class):
            bad(f'output_to_class values must be class ids 0..{k - 1} or 255')

    def replace(self, **kw) -> 'ModelConfig':
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict, source: str = '<dict>') -> 'ModelConfig':
        if not isinstance(d, dict):
            raise ModelError(f'model config {source}: expected a mapping, got {type(d).__name__}')
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelError(f'model config {source}: unknown keys {", ".join(unknown)}')
        d = dict(d)
        if 'arch' not in d:
            raise ModelError(f'model config {source}: missing key arch')
        d.setdefault('name', Path(source).stem if source != '<dict>' else d['arch'])
        if d['arch'] == 'espnet':   # ESPNet defaults differ from ESPNetv2's
            d.setdefault('channel_order', 'BGR')
            d.setdefault('normalise_before_resize', True)
            d.setdefault('scale_before_normalise', False)
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelError(f'model config {source}: {e}') from None

    @classmethod
    def from_yaml(cls, path) -> 'ModelConfig':
        import yaml
        path = Path(path)
        if not path.is_file():
            raise ModelError(f'model config {path} not found')
        try:
            d = yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001 - any parse problem is a config error
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f'model config {path}: not valid yaml ({msg})') from None
        return cls.from_dict(d, str(path))


# ---- registry of the published checkpoints (files under shared_dir()/models) -------------
def _espnetv2(width: float, res=(1024, 512)) -> tuple[str, ModelConfig]:
    suffix = '' if tuple(res) == (1024, 512) else f'_{res[0]}x{res[1]}'
    name = f'espnetv2_s{width}{suffix}'
    cfg = ModelConfig(name=name, arch='espnetv2', width=width, input_size=res,
                      output_to_class=tuple(range(19)) + (255,))
    return f'espnetv2/espnetv2_s_{width}_city_{res[0]}x{res[1]}.pth', cfg


def _espnet(q: int, camvid: bool = False) -> tuple[str, ModelConfig]:
    if camvid:
        cfg = ModelConfig(name=f'espnet_p2q{q}_camvid', arch='espnet', p=2, q=q, variant='train',
                          input_size=(480, 360), channel_order='BGR', mean=ESPNET_CAMVID_MEAN,
                          std=ESPNET_CAMVID_STD, scale_before_normalise=False,
                          normalise_before_resize=True, class_set='camvid', num_outputs=12,
                          output_to_class=tuple(range(11)) + (255,))
        return f'espnet/espnet_p_2_q_{q}_camvid.pth', cfg
    cfg = ModelConfig(name=f'espnet_p2q{q}', arch='espnet', p=2, q=q, variant='test',
                      input_size=(1024, 512), channel_order='BGR', mean=ESPNET_CITY_MEAN,
                      std=ESPNET_CITY_STD, scale_before_normalise=False,
                      normalise_before_resize=True, output_to_class=tuple(range(19)) + (255,))
    return f'espnet/espnet_p_2_q_{q}.pth', cfg


def _build_registry() -> dict:
    reg = {}
    for w in (2.0, 1.0, 0.5, 1.5):
        for res in ((1024, 512), (512, 256)):
            rel, cfg = _espnetv2(w, res)
            reg[cfg.name] = (rel, cfg)
    for q in (8, 5, 3):
        rel, cfg = _espnet(q)
        reg[cfg.name] = (rel, cfg)
    rel, cfg = _espnet(8, camvid=True)
    reg[cfg.name] = (rel, cfg)
    return reg


REGISTRY: dict = _build_registry()
# Aliases: explicit 1024x512 suffix and the checkpoint file stems.
ALIASES = {f'{n}_1024x512': n for n, (_, c) in REGISTRY.items()
           if c.arch == 'espnetv2' and c.input_size == (1024, 512)}
ALIASES.update({Path(rel).stem: n for n, (rel, _) in REGISTRY.items()})


def registry_names() -> list:
    return list(REGISTRY)


def lookup(name: str):
    """(relative weights path, config) for a registry name or alias, else None."""
    key = ALIASES.get(name, name)
    if key in REGISTRY:
        rel, cfg = REGISTRY[key]
        return rel, cfg.replace()
    return None


def preset_for_file(path: Path):
    """Registry config whose checkpoint has this file name, else None."""
    for rel, cfg in REGISTRY.values():
        if Path(rel).name == path.name:
            return cfg.replace()
    return None


def size_from_name(name: str):
    m = re.search(r'(\d{2,5})x(\d{2,5})', name)
    return (int(m.group(1)), int(m.group(2))) if m else None
