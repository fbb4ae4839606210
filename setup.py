"""pip-installable ROS-free core of scanssc_ros (model, data, metrics, bag tools, CLIs).

The ROS package (messages, node executable, launch/config/rviz) is built by colcon from CMakeLists.txt; this file
lets `pip install -e .` provide the library and the `scanssc-*` console scripts without ROS.
"""
from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "scanssc-train=scanssc_ros.cli.train:main",
    "scanssc-eval=scanssc_ros.cli.evaluate:main",
    "scanssc-infer=scanssc_ros.cli.infer:main",
    "scanssc-synth=scanssc_ros.cli.synth:main",
    "scanssc-export=scanssc_ros.cli.export:main",
    "scanssc-import=scanssc_ros.cli.import_official:main",
    "scanssc-kitti2bag=scanssc_ros.bag.kitti2bag:main",
    "scanssc-play=scanssc_ros.bag.play:main",
    "scanssc-record=scanssc_ros.bag.record:main",
]


setup(
    name="scanssc_ros",
    version="0.1.0",
    description="ScanSSC camera-based 3D semantic scene completion in pure PyTorch, with a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["scanssc_ros", "scanssc_ros.*"]),
    install_requires=[
        "numpy",
        "torch>=2.4",  # torch.is_autocast_enabled(device_type), used by the fast paths and the geometry
        "opencv-python-headless",
        "pyyaml",
        "tqdm",
        "rosbags>=0.11,<0.12",
        "matplotlib",
        "pillow",
    ],
    extras_require={"test": ["pytest", "ruff"]},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
