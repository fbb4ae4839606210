"""Helpers for the ROS integration tests (imported only by tests marked ``ros``)."""
from __future__ import annotations

import time
from typing import Callable

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


def spin_until(node: Node, done: Callable[[], bool], timeout: float, executor=None) -> bool:
    """Spin ``node`` until ``done()`` or ``timeout`` seconds; returns ``done()``."""
    own = executor is None
    if own:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        if own:
            executor.remove_node(node)
    return done()
