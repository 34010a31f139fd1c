"""The one build step pyproject.toml cannot declare: the recipes of ``configs/`` ship inside the wheel as
``tfdistill/configs/``, so ``tfdistill demo`` and recipe names work from any install.

``configs/`` stays at the top of the repository (the paths ``configs/...`` work from a checkout) and the package
keeps a plain src layout (an editable install is a path entry that type checkers follow; it reads ``configs/`` in
place, see ``tfdistill.recipes``)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildPyWithRecipes(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads configs/ where it is
            return
        recipes = sorted(CONFIGS.rglob("*.yaml"))
        if not recipes:
            raise SystemExit(f"setup.py: no recipes under {CONFIGS}: the wheel would ship without them")
        for src in recipes:
            dst = Path(self.build_lib, "tfdistill", "configs", src.relative_to(CONFIGS))
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))


setup(cmdclass={"build_py": BuildPyWithRecipes})
