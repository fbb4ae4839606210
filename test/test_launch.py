"""launch/scanssc.launch.py: executed for real where launch_ros imports, and checked here with stand-in launch
modules (launch/launch_ros cannot be installed from PyPI) so a wrong executable, a missing file or a syntax
error fails on every machine."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from scanssc_ros.ros.params import PARAMS_BY_NAME, node_params_from_yaml, validate_values

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "scanssc.launch.py"


def _installed_executables() -> set:
    cmake = (REPO / "CMakeLists.txt").read_text()
    return {Path(p).name for p in re.findall(r"install\(PROGRAMS\s+([^\s)]+)", cmake)}


def test_launch_file_parses_and_names_real_things():
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    package = ET.parse(REPO / "package.xml").getroot().findtext("name")
    assert consts["PACKAGE"] == package
    assert consts["EXECUTABLE"] in _installed_executables()
    assert (REPO / "scripts" / consts["EXECUTABLE"]).is_file()


def test_params_file_is_valid_and_complete():
    params = node_params_from_yaml(yaml.safe_load((REPO / "config" / "scanssc.yaml").read_text()))
    assert validate_values(params) == []
    assert set(params) == set(PARAMS_BY_NAME), "config/scanssc.yaml should list every parameter"
    for name, value in params.items():
        default = PARAMS_BY_NAME[name].default
        assert value == pytest.approx(default) if isinstance(default, list) else value == default, name


def test_rviz_config_is_yaml_and_shows_node_outputs():
    rviz = yaml.safe_load((REPO / "rviz" / "scanssc.rviz").read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    topics = {d.get("Topic", {}).get("Value") for d in displays}
    assert {"/scanssc_node/voxel_markers", "/scanssc_node/voxel_cloud", "/scanssc_node/occupancy",
            "/scanssc_node/obstacles"} <= topics
    assert rviz["Visualization Manager"]["Global Options"]["Fixed Frame"] == PARAMS_BY_NAME["grid_frame"].default


# --------------------------------------------------------------------------------- stand-in launch modules
class _Cfg:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _fake_launch_modules(share: Path) -> dict:
    recorded = {}

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class Node(Action):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            recorded.setdefault("nodes", []).append(kwargs)

    mods = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.conditions", "launch.substitutions", "launch_ros",
        "launch_ros.actions", "ament_index_python", "ament_index_python.packages")}
    mods["launch"].LaunchDescription = lambda entities: list(entities)
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (Action,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (Action,), {})
    mods["launch.conditions"].IfCondition = type("IfCondition", (Action,), {})
    mods["launch.substitutions"].LaunchConfiguration = _Cfg
    mods["launch_ros.actions"].Node = Node
    mods["ament_index_python.packages"].get_package_share_directory = lambda pkg: str(share)
    return mods, recorded


def _run_with_fakes(monkeypatch, overrides: dict):
    mods, recorded = _fake_launch_modules(REPO)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("scanssc_launch_under_test", LAUNCH)
    launch_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_mod)
    entities = launch_mod.generate_launch_description()
    declared = {e.args[0]: e.kwargs.get("default_value")
                for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    context = types.SimpleNamespace(launch_configurations={**declared, **overrides})
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    opaque[0].kwargs["function"](context)
    return declared, recorded["nodes"]


def test_launch_description_with_stand_in_modules(monkeypatch):
    declared, nodes = _run_with_fakes(monkeypatch, {})
    for arg in ("config", "checkpoint", "device", "namespace", "use_rviz", "left_image", "right_image",
                "left_info", "right_info", "depth_image"):
        assert arg in declared, arg
    assert Path(declared["config"]).is_file() and Path(declared["rviz_config"]).is_file()
    scanssc = [n for n in nodes if n["package"] == "scanssc_ros"]
    assert len(scanssc) == 1
    node = scanssc[0]
    assert node["executable"] in _installed_executables()
    assert node["parameters"] == [declared["config"], {"use_sim_time": False}], \
        "empty launch arguments must not override the params file"
    remaps = dict(node["remappings"])
    assert remaps["left/image_rect"] == "/kitti/camera_color_left/image_raw"
    assert remaps["right/camera_info"] == "/kitti/camera_color_right/camera_info"


def test_launch_arguments_override_parameters(monkeypatch):
    _, nodes = _run_with_fakes(monkeypatch, {"checkpoint": "/tmp/m.pt", "device": "cuda:1",
                                             "allow_untrained": "true", "left_image": "/cam/left",
                                             "base_frame": "base_link", "input_reliability": "best_effort",
                                             "input_depth": "5", "mark_unseen": "false"})
    node = [n for n in nodes if n["package"] == "scanssc_ros"][0]
    overrides = node["parameters"][1]
    assert overrides == {"checkpoint": "/tmp/m.pt", "device": "cuda:1", "allow_untrained": True,
                         "base_frame": "base_link", "input_reliability": "best_effort", "input_depth": 5,
                         "mark_unseen": False}
    assert validate_values(overrides) == []
    assert dict(node["remappings"])["left/image_rect"] == "/cam/left"


def test_camera_namespace_and_sim_time(monkeypatch):
    _, nodes = _run_with_fakes(monkeypatch, {"camera_namespace": "/stereo/", "right_info": "/other/info",
                                             "use_sim_time": "true"})
    node = [n for n in nodes if n["package"] == "scanssc_ros"][0]
    remaps = dict(node["remappings"])
    assert remaps["left/image_rect"] == "/stereo/left/image_rect"
    assert remaps["left/camera_info"] == "/stereo/left/camera_info"
    assert remaps["depth/image"] == "/stereo/depth/image"
    assert remaps["right/camera_info"] == "/other/info"  # an explicit topic argument wins
    assert node["parameters"][-1] == {"use_sim_time": True}


def test_launch_argument_chooses_compressed_input(monkeypatch):
    declared, nodes = _run_with_fakes(monkeypatch, {"image_transport": "compressed"})
    assert declared["image_transport"] == ""  # empty by default: the params file's value (raw) stays
    node = [n for n in nodes if n["package"] == "scanssc_ros"][0]
    assert node["parameters"][1] == {"image_transport": "compressed"}
    assert validate_values(node["parameters"][1]) == []
    # the base topic is what gets remapped; the node subscribes to <remapped base>/compressed
    assert dict(node["remappings"])["left/image_rect"] == "/kitti/camera_color_left/image_raw"


def test_launch_file_runs_under_real_launch():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; runs on a real ROS install")
    from launch import LaunchDescription
    spec = importlib.util.spec_from_file_location("scanssc_launch_real", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert isinstance(mod.generate_launch_description(), LaunchDescription)
