"""Locations of shared data (never copied into the package) and packaged resources."""
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PACKAGE_DIR / 'weights'


def shared_dir() -> Path:
    """Root of the shared data/models folder: $VIDSEG_SHARED, else ``<cwd or repo>/../shared``."""
    env = os.environ.get('VIDSEG_SHARED')
    if env:
        return Path(env).resolve()
    for base in (Path.cwd(), PACKAGE_DIR.parent):
        cand = (base / '..' / 'shared').resolve()
        if cand.is_dir():
            return cand
    return (Path.cwd() / '..' / 'shared').resolve()


def has_shared() -> bool:
    return (shared_dir() / 'models').is_dir()
