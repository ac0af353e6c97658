"""Build hook (everything else is in pyproject.toml): ship the model-card template (``model_cards/*.jinja``) and
the recipe configs (``recipes/*.yaml``) inside the package as ``hf_divcl/_resources/<folder>/``, so an installed
wheel can write model cards and run the packaged recipes. In a checkout (and an editable install) the top-level
folders stay the only copy; ``hf_divcl._common.resource_path`` finds either.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RESOURCES = {"model_cards": "*.jinja", "recipes": "*.yaml"}


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, pattern in RESOURCES.items():
            sources = sorted((ROOT / folder).glob(pattern))
            if not sources:
                raise FileNotFoundError(f"{folder}/{pattern} matched nothing: the wheel would ship without it.")
            for src in sources:
                target = Path(self.build_lib, "hf_divcl", "_resources", folder, src.name)
                self.mkpath(str(target.parent))
                self.copy_file(str(src), str(target))


setup(cmdclass={"build_py": BuildPyWithResources})
