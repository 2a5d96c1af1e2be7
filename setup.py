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
    # TensorFlow runs the input pipeline on the host under both Keras backends; kbert never
    # requires jax, so on a Colab TPU it installs beside the runtime's jax, jaxlib and libtpu.
    # TensorFlow 2.20 is allowed for the TPUStrategy route (tensorflow-tpu's newest is 2.20.0).
    # keras and keras-hub are bounded at the minor versions the suite passes: kbert reaches into
    # their private internals (tests/test_internals.py names each).
    install_requires=[
        "tensorflow>=2.20,<2.22",
        # tensorflow-text 2.21.0 broke keras-hub's tokenizers (keras-hub#2979).
        "tensorflow-text>=2.20.1,<2.22,!=2.21.0",
        "tensorflow-serving-api>=2.20,<2.22",
        "keras>=3.15,<3.16",
        "keras-hub>=0.32,<0.33",
        "tensorflow-datasets",
        "tokenizers",
        "tqdm",
        "safetensors",
        "matplotlib",
        "tensorboard",
        "h5py",
    ],
    extras_require={
        # The JAX backend on CPU (`KERAS_BACKEND=jax`); a TPU runtime brings its own jax.
        "jax": ["jax"],
        # `kbert create-data --runner beam`; add apache-beam[gcp] for Dataflow.
        "beam": ["apache-beam>=2.77"],
        # The live checks of `kbert export --format huggingface` against Hugging Face transformers
        # (PyTorch), `python -m pytest tests -m huggingface`; the default tests compare with
        # reference outputs that transformers made (tests/make_huggingface_references.py).
        "huggingface-test": ["transformers>=5,<6", "torch==2.13.0"],
        # What the tests and CI's lint need (Beam's and the notebook's tests included); CI pins
        # jax[cpu] to the Colab TPU runtime's version.
        "test": [
            "pytest",
            "psutil",
            # tests/test_finetune.py checks kbert's GLUE metrics against scikit-learn's.
            "scikit-learn",
            "jax[cpu]",
            "ruff>=0.17,<0.18",
            "apache-beam>=2.77",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
    },
    entry_points={"console_scripts": ["kbert=kbert.cli:main"]},
)
