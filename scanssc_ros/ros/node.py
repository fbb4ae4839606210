"""``scanssc_node``: the ROS 2 wiring around the ScanSSC predictor.

This file only declares and validates the parameters, and starts/stops cleanly; the camera pipeline lands on
top of it (inputs -> Predictor -> voxel messages) without changing how parameters are handled.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Dict, List, Optional

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from scanssc_ros.ros.params import PARAMS, PARAMS_BY_NAME, ParameterError, ParamSpec


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.min is not None and spec.max is not None:
        if spec.kind is int:
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
        elif spec.kind is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max))]
    return desc


class ScanSSCNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("scanssc_node", **kwargs)
        self.params: Dict[str, Any] = self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"scanssc_node ready: variant={self.params['variant']} device={self.params['device']} "
            f"precision={self.params['precision']} depth_mode={self.params['depth_mode']}")

    def _declare_parameters(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {}
        problems: List[str] = []
        for spec in PARAMS:
            try:
                value = self.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
            except Exception as exc:  # rclpy raises several types for wrong type / out of range overrides
                problems.append(f"{spec.name}: {exc}")
                continue
            if isinstance(value, tuple) or type(value).__name__ == "array":
                value = list(value)
            problem = spec.validate(value)
            if problem:
                problems.append(problem)
            values[spec.name] = value
        if problems:
            raise ParameterError("; ".join(problems))
        return values

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        for p in params:
            spec = PARAMS_BY_NAME.get(p.name)
            if spec is None:  # e.g. use_sim_time: rclpy validates its own parameters
                continue
            value = list(p.value) if isinstance(p.value, (tuple, list)) or type(p.value).__name__ == "array" \
                else p.value
            problem = spec.validate(value)
            if problem:
                self.get_logger().warning(f"rejected parameter update: {problem}")
                return SetParametersResult(successful=False, reason=problem)
        for p in params:
            if p.name in self.params:
                self.params[p.name] = p.value
        return SetParametersResult(successful=True)


def main(argv: Optional[List[str]] = None) -> int:
    # Our own SIGINT/SIGTERM handling: rclpy's handlers did not reliably end spin() in the PyPI wheels, and a
    # flag checked between short spin_once() calls also gives later worker threads one place to stop.
    stop = threading.Event()
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = ScanSSCNode()
    except ParameterError as exc:
        print(f"[scanssc_node] invalid parameters: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.get_logger().info("shutting down")
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
