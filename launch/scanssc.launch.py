"""Launch scanssc_node (and optionally RViz).

    ros2 launch scanssc_ros scanssc.launch.py checkpoint:=/path/model.pt device:=cuda use_rviz:=true
    ros2 launch scanssc_ros scanssc.launch.py checkpoint:=/path/model.pt image_transport:=compressed
    ros2 launch scanssc_ros scanssc.launch.py checkpoint:=/path/model.pt camera_namespace:=/stereo \
        base_frame:=base_link output_frame:=odom use_sim_time:=true

Input topics: an explicit topic argument (left_image, left_info, ...) wins; otherwise, with camera_namespace set,
the stereo_image_proc layout under it (<ns>/left/image_rect, <ns>/left/camera_info, <ns>/right/..., and
<ns>/depth/image); otherwise the KITTI bag topics of scanssc-kitti2bag.

With image_transport:=compressed the node reads sensor_msgs/CompressedImage from the remapped image topics plus
"/compressed" (e.g. /kitti/camera_color_left/image_raw/compressed), as image_transport does.

Launch arguments left empty keep the value from the params file (`config`), so a user's own YAML is not
silently overridden.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "scanssc_ros"
EXECUTABLE = "scanssc_node"

def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


# launch argument -> node parameter; an empty argument leaves the params file's value in place
PARAM_ARGS = {
    "checkpoint": ("checkpoint", str),
    "device": ("device", str),
    "precision": ("precision", str),
    "depth_mode": ("depth_mode", str),
    "image_transport": ("image_transport", str),
    "rectify_input": ("rectify_input", _flag),
    "input_reliability": ("input_reliability", str),
    "input_depth": ("input_depth", int),
    "variant": ("variant", str),
    "base_frame": ("base_frame", str),
    "output_frame": ("output_frame", str),
    "mark_unseen": ("mark_unseen", _flag),
    "allow_untrained": ("allow_untrained", _flag),
}

# node-relative input topic -> (launch argument, KITTI bag topic used when neither the argument nor
# camera_namespace is given)
TOPIC_ARGS = {
    "left/image_rect": ("left_image", "/kitti/camera_color_left/image_raw"),
    "left/camera_info": ("left_info", "/kitti/camera_color_left/camera_info"),
    "right/image_rect": ("right_image", "/kitti/camera_color_right/image_raw"),
    "right/camera_info": ("right_info", "/kitti/camera_color_right/camera_info"),
    "depth/image": ("depth_image", "/depth/image"),
}


def _remap_target(context, topic: str) -> str:
    arg, kitti = TOPIC_ARGS[topic]
    explicit = LaunchConfiguration(arg).perform(context)
    if explicit:
        return explicit
    ns = LaunchConfiguration("camera_namespace").perform(context).rstrip("/")
    return f"{ns}/{topic}" if ns else kitti


def _node(context, *args, **kwargs):
    config = LaunchConfiguration("config").perform(context)
    overrides = {}
    for arg, (param, cast) in PARAM_ARGS.items():
        value = LaunchConfiguration(arg).perform(context)
        if value != "":
            overrides[param] = cast(value)
    remaps = [(topic, _remap_target(context, topic)) for topic in TOPIC_ARGS]
    sim_time = {"use_sim_time": _flag(LaunchConfiguration("use_sim_time").perform(context))}
    return [Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=LaunchConfiguration("node_name").perform(context),
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[config, overrides, sim_time] if overrides else [config, sim_time],
        remappings=remaps,
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "scanssc.yaml"),
                              description="Params file for scanssc_node"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("node_name", default_value="scanssc_node", description="Node name"),
        DeclareLaunchArgument("log_level", default_value="info", description="Node log level"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with --clock) for the node and RViz"),
        DeclareLaunchArgument("camera_namespace", default_value="",
                              description="Camera namespace: inputs <ns>/left/image_rect, <ns>/left/camera_info, "
                                          "<ns>/right/..., <ns>/depth/image unless a topic argument is given"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="Start RViz with rviz/scanssc.rviz"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "rviz", "scanssc.rviz"),
                              description="RViz config file"),
    ]
    args += [DeclareLaunchArgument(arg, default_value="", description=f"Override parameter '{param}' "
                                   "(empty: keep the params file's value)")
             for arg, (param, _) in PARAM_ARGS.items()]
    args += [DeclareLaunchArgument(arg, default_value="", description=f"Topic remapped to the node's '{topic}' "
                                   f"(empty: <camera_namespace>/{topic}, or {kitti} without a namespace)")
             for topic, (arg, kitti) in TOPIC_ARGS.items()]
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", LaunchConfiguration("rviz_config")],
                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
                condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription(args + [OpaqueFunction(function=_node), rviz])
