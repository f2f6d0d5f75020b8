"""Where things are: the repository, its folders, and the data shipped inside the package."""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PACKAGE_DATA = PACKAGE / "data"  # prompts, paper tables, local task lists (package data)
REPO_ROOT = PACKAGE.parent
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RESULTS_DIR = REPO_ROOT / "results" / "runs"
REFERENCE_DIR = REPO_ROOT / "results" / "reference"
