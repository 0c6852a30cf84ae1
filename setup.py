"""Packaging for carvana-unet: packages ``trainer``, ``serving``, ``local_aws``; the ``carvana`` command."""

from setuptools import find_packages, setup

# TensorFlow 2.19 matches the SageMaker TF 2.19 training and inference containers, so a SavedModel
# exported here loads unchanged in TF Serving 2.19 on an endpoint.
INSTALL_REQUIRES = [
    "tensorflow-cpu==2.19.*; platform_machine == 'x86_64' or platform_machine == 'aarch64'",
    "keras>=3.5,<4",
    "numpy>=1.26,<2.2",
    "pillow>=10",
    "matplotlib>=3.8",
    "boto3>=1.34",
    "tqdm>=4.66",
    "sagemaker>=2.257,<3",
    "optuna>=3.6",
    "flask>=3.0",
    "gunicorn>=22",
    "requests>=2.31",
]

EXTRAS = {
    # On a GPU machine install tensorflow[and-cuda] next to (instead of) the CPU wheel.
    "gpu": ["tensorflow[and-cuda]==2.19.*"],
    "dev": [
        "pytest>=8",
        "ruff>=0.5",
        "mypy>=1.11",
        "moto[server]>=5.0",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "cfn-lint>=1.0",
    ],
}

setup(
    name="carvana-unet",
    version="0.1.0",
    description="Car background removal for photo studios: a Keras U-Net trained on SageMaker, "
    "served by TF Serving, called through AWS Lambda.",
    python_requires=">=3.11,<3.13",
    packages=find_packages(
        include=["trainer", "trainer.*", "serving", "serving.*", "local_aws", "local_aws.*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["carvana=trainer.cli:main"]},
)
