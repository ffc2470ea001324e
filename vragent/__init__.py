"""vragent: a short-video platform sandbox with LLM user and item agents (VRAgent-R1).

The repository keeps the design card's folders at its top (``sandbox/``, ``agents/``,
``environments/``, ``rl/``, ``dashboards/``, ``scenarios/``); they install under this one
import name (``vragent.sandbox``, ``vragent.agents``, …; ``pyproject.toml`` maps the folders),
so they never collide with other packages called ``agents`` or ``rl``. docs/architecture.md
describes the packages.
"""

from pathlib import Path as _Path

# In a source checkout the subpackages are this folder's siblings (sandbox/, agents/, …): put
# the checkout on the package's path, so ``vragent.sandbox`` imports from it with or without
# an editable install. An installed wheel has them inside this folder and no pyproject.toml
# beside it, and this adds nothing.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "sandbox" / "__init__.py").is_file():
    __path__.append(str(_ROOT))
