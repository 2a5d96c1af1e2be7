"""kbert: BERT pre-training (joint MLM + NSP) in TensorFlow 2 / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="kbert",
    version="0.1.0",
    description="Pre-train BERT encoders with the original joint MLM + NSP objective in Keras 3.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kbert", "kbert.*", "tfrecords_tools", "tfrecords_tools.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow~=2.21",
        "keras~=3.15",
        "keras-hub~=0.32",
        "tensorflow-text~=2.21",
        "tensorflow-datasets",
        "tokenizers",
        "tqdm",
        "safetensors",
        "matplotlib",
        "tensorflow-serving-api~=2.21",
        "tensorboard",
        "h5py",
    ],
    extras_require={
        "test": ["pytest", "psutil"],
        # `kbert create-data --runner beam`; add apache-beam[gcp] for Dataflow.
        "beam": ["apache-beam>=2.77"],
    },
    entry_points={"console_scripts": ["kbert=kbert.cli:main"]},
)
