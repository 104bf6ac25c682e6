"""Recipes and accelerate configs shipped inside the package, found by name or by path.

The files live in ``rlhf_trl/recipes/<name>/`` and ``rlhf_trl/accelerate_configs/<name>.yaml`` (package data, so a
wheel install has them too; the repository's top-level ``recipes`` and ``accelerate_configs`` are links to these
folders). Everything that needs one of them asks here: ``recipe_dir("tiny")``, ``accelerate_config("zero2")``.
A name that is not shipped and not an existing path raises ``ResourceNotFound`` with one line naming what exists.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_DIR = PACKAGE_DIR / "recipes"
ACCELERATE_CONFIGS_DIR = PACKAGE_DIR / "accelerate_configs"


class ResourceNotFound(ValueError):
    """An unknown recipe or accelerate config; the message is one line listing the shipped names."""


def recipe_names() -> list[str]:
    return sorted(path.name for path in RECIPES_DIR.iterdir() if path.is_dir() and any(path.glob("*.yaml")))


def accelerate_config_names() -> list[str]:
    return sorted(path.stem for path in ACCELERATE_CONFIGS_DIR.glob("*.yaml"))


def recipe_dir(name_or_path: str | Path) -> Path:
    """The folder of a shipped recipe (``tiny``) or an existing folder given by path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in recipe_names():
        return RECIPES_DIR / str(name_or_path)
    raise ResourceNotFound(
        f"unknown recipe {str(name_or_path)!r}: not a folder, and the shipped recipes are {', '.join(recipe_names())}"
    )


def accelerate_config(name_or_path: str | Path) -> Path:
    """The file of a shipped accelerate config (``zero2`` or ``zero2.yaml``) or an existing file given by path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml")
    if name in accelerate_config_names():
        return ACCELERATE_CONFIGS_DIR / f"{name}.yaml"
    raise ResourceNotFound(
        f"unknown accelerate config {str(name_or_path)!r}: not a file, and the shipped configs are "
        f"{', '.join(accelerate_config_names())}"
    )


def recipe_file(name_or_path: str | Path) -> Path:
    """A step's YAML: an existing file as given, else a shipped one named ``<recipe>/<file>`` (``tiny/sft.yaml``, or
    ``recipes/tiny/sft.yaml`` as in the repository, from any folder).
    A path that is neither comes back unchanged, for the step to report as missing."""
    path = Path(name_or_path)
    parts = path.parts[1:] if len(path.parts) == 3 and path.parts[0] == "recipes" else path.parts  # README's form
    if path.exists() or len(parts) != 2 or parts[0] not in recipe_names():
        return path
    shipped = RECIPES_DIR / parts[0] / parts[1]
    shipped = shipped if shipped.suffix == ".yaml" else shipped.with_suffix(".yaml")
    return shipped if shipped.exists() else path


def first_comment(path: Path) -> str:
    """The first sentence of a YAML file's opening comment: its one-line description."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text.split(". ")[0].rstrip(".") if text else ""


def recipe_description(name: str) -> str:
    folder = RECIPES_DIR / name
    steps = sorted(path.stem for path in folder.glob("*.yaml") if path.stem != "e2e")
    # A recipe describes itself in the opening comment of its e2e.yaml, else of its sft.yaml.
    described = [folder / name for name in ("e2e.yaml", "sft.yaml") if (folder / name).exists()]
    description = first_comment(described[0]) if described else ""
    return f"{description} ({', '.join(steps)})" if description else ", ".join(steps)


def listing() -> str:
    """What ``rlhf-trl recipes`` prints: every shipped recipe and accelerate config, one line each."""
    lines = ["recipes (rlhf-trl e2e --recipe NAME; rlhf-trl sft --config NAME/sft.yaml; or paths to your own):"]
    lines += [f"  {name:<16} {recipe_description(name)}" for name in recipe_names()]
    lines += ["", "accelerate configs (--accelerate_config NAME, or a path to your own):"]
    lines += [
        f"  {name:<16} {first_comment(ACCELERATE_CONFIGS_DIR / f'{name}.yaml')}" for name in accelerate_config_names()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("usage: rlhf-trl recipes   (lists the shipped recipes and accelerate configs)")
        return 0 if argv[0] in ("-h", "--help") else 2
    print(listing())
    return 0
